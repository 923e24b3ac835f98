"""One serving process: the HTTP connection (``HTTPChannel`` and its factory), the process's
state and per-request accounting, the HTTP service that binds the listeners, and the root service
of a single-process server (signals, drain, exit status).

Adapters and services, reactor passed in. Imports :mod:`catalyzer.http`, :mod:`catalyzer.wsgi`,
:mod:`catalyzer.ops`, :mod:`catalyzer.process` (the scoreboard) and the settings; never prefork or
dispatch.
"""
