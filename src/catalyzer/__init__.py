"""catalyzer: a WSGI server on Twisted, run as ``twistd -n catalyzer --app module:app``."""

from catalyzer.extensions import prefer_fresh_sources

__version__ = "0.1.0"

prefer_fresh_sources()
