"""twistd plugins: ``twistd -n catalyzer --app myapp:app``, ``twistd -n catalyzer-dispatch
--methods mymodule`` and split mode's ``catalyzer-front`` and ``catalyzer-handler``. Thin on purpose: the real code is imported only when the command runs."""

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
catalyzer_front = ServiceMaker(
    "catalyzer-front",
    "catalyzer.split.fronttap",
    "Split mode's HTTP front: the HTTP engine, with requests answered by catalyzer-handler "
    "processes on any host over ZeroMQ.",
    "catalyzer-front",
)
catalyzer_handler = ServiceMaker(
    "catalyzer-handler",
    "catalyzer.split.handlertap",
    "Split mode's WSGI handler: runs the app for requests from catalyzer-front fronts.",
    "catalyzer-handler",
)
