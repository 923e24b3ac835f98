"""The WSGI side of a request: the environ, loading the app, the response that runs the app's
iterable with back-pressure (in the reactor thread or, with ``--threads``, in a pool), the file
wrapper and the PEP 3333 types.

``environ``, ``appspec``, ``filewrapper`` and ``types`` are pure; ``response`` is an adapter that
talks to the connection through a small sink. Imports :mod:`catalyzer.http` only.
"""
