"""Tests of the HTTP engine: the request reader and hostile input."""
