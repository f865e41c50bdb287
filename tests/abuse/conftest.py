"""Abuse tests drive the real bot against the local fakes, as the end-to-end tests do."""

from tests.e2e.conftest import (  # noqa: F401  (fixtures and the report hook, by name)
    _show_bot_log_on_failure,
    pytest_runtest_makereport,
    world,
)
