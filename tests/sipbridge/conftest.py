"""Fixtures shared by the sipbridge tests."""

from collections.abc import Iterator

import pytest

from .postgres import pg_server, pg_url  # noqa: F401  (the real PostgreSQL of the store tests)
from .procs import STARTED, stop_left_running


@pytest.fixture(autouse=True, scope="module")
def _no_process_outlives_its_module() -> Iterator[None]:
    """A `sipbridge` a test started and left running (an assert failed before its stop) is stopped when its
    module ends. Per module, not per test: a module's shared servers may be started inside a test
    (`request.getfixturevalue`) and must outlive it."""
    before = len(STARTED)
    yield
    stop_left_running(STARTED[before:])


@pytest.fixture(autouse=True, scope="session")
def _no_process_outlives_the_session() -> Iterator[None]:
    yield
    stop_left_running(STARTED)
