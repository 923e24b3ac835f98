"""Processes that watch processes: the supervision policy (a pure object fed events, returning
commands), the child plumbing (spawnProcess with a control socketpair, output tagged, exit
reported), the shared-memory scoreboard and signal installation.

Shared by the prefork master and the task dispatcher. ``supervision`` and ``scoreboard`` are pure;
the rest are adapters. Imports :mod:`catalyzer.ops` (trace) only.
"""
