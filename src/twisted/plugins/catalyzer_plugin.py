"""twistd plugin: ``twistd -n catalyzer --app myapp:app``. Thin on purpose: the real code is
imported only when the command runs."""

from twisted.application.service import ServiceMaker

catalyzer = ServiceMaker(
    "catalyzer",
    "catalyzer.tap",
    "A production WSGI server: non-blocking HTTP/1.1 in front of any WSGI app.",
    "catalyzer",
)
