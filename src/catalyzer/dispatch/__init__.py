"""The task dispatcher (seed 003): a pool of child processes running named functions.

The public face: :class:`PreforkDispatcher` and the types its results come in. Inside:
``pool`` (the service, on :mod:`catalyzer.process`), ``wire`` (the pool/child contract, no
Twisted), ``tasks`` (results, pickling, lookup: no Twisted), ``child`` (the child's entry point,
no Twisted at all) and ``tap`` (``twistd catalyzer-dispatch``, an XML-RPC face). It imports
:mod:`catalyzer.process` and :mod:`catalyzer.ops`, never the HTTP server or the prefork master.
"""

from catalyzer.dispatch.pool import (
    PreforkDispatcher,
    SerializationError,
    TaskError,
    TaskFailed,
    TaskRequest,
    TaskResult,
    describe_all,
    running,
)

__all__ = [
    "PreforkDispatcher",
    "SerializationError",
    "TaskError",
    "TaskFailed",
    "TaskRequest",
    "TaskResult",
    "describe_all",
    "running",
]
