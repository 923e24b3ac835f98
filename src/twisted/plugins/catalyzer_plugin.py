"""twistd plugins: ``twistd -n catalyzer --app myapp:app`` and ``twistd -n catalyzer-dispatch
--methods mymodule``. Thin on purpose: the real code is imported only when the command runs."""

from twisted.application.service import ServiceMaker

catalyzer = ServiceMaker(
    "catalyzer",
    "catalyzer.tap",
    "A production WSGI server: non-blocking HTTP/1.1 in front of any WSGI app.",
    "catalyzer",
)
catalyzer_dispatch = ServiceMaker(
    "catalyzer-dispatch",
    "catalyzer.dispatch.tap",
    "A preforking task dispatcher: a module's functions over XML-RPC, run in child processes.",
    "catalyzer-dispatch",
)
