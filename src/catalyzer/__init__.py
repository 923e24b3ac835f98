"""catalyzer: a WSGI server on Twisted, run as ``twistd -n catalyzer --app module:app``."""

__version__ = "0.1.0"
