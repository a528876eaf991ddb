"""Fixtures shared by the sipbridge tests."""

from .postgres import pg_server, pg_url  # noqa: F401  (the real PostgreSQL of the store tests)
