"""What makes a running server visible: Prometheus metrics, the JSON status app, the manhole, the
access log, the debug trace, the log format and the introspection registry the state dump reads.

Adapters and services. Imports :mod:`catalyzer.wsgi` types and the settings only: everything else
hands its numbers in.
"""
