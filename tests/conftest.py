"""Shared fixtures. Unit tests drive the engine in memory (StringTransport, Clock); integration
tests (marked ``integration``) start real processes on 127.0.0.1 and wait on readiness with
deadlines."""
