"""The end-to-end fixtures (fakes on loopback, the real bot as a process), reused as they are."""

from __future__ import annotations

from tests.e2e.conftest import (  # noqa: F401  (fixtures and the report hook, by import)
    _show_bot_log_on_failure,
    pytest_runtest_makereport,
    world,
)
