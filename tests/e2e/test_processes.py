"""Beyond one process: the real bot on PostgreSQL (``DATABASE_URL``), first as one process
running the same flows as on SQLite, then as three processes sharing one database and the
gateway's shards, against the fake Discord and the fake ModelsLab."""

from __future__ import annotations

import pytest
import pytest_asyncio

from tests.e2e.conftest import start_world

# The flows members use, run again here on a bot whose store is PostgreSQL.
from tests.e2e.test_generate import (  # noqa: F401
    test_a_failed_generation_reaches_the_member_in_words,
    test_api_error_at_submit_reaches_the_member_in_words,
    test_img2img_on_each_endpoint_is_delivered,
    test_inpaint_converts_a_transparent_mask_and_is_delivered,
    test_quota_shows_todays_figures,
)
from tests.e2e.test_quotas import (  # noqa: F401
    test_a_failed_job_is_refunded,
    test_a_member_at_the_limit_is_refused_with_no_api_call,
    test_history_lists_recent_jobs_with_pages,
    test_member_override_and_server_limit_apply_to_the_next_command,
    test_one_member_cannot_fill_the_queue,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory, postgres_server):
    """One bot process whose store is PostgreSQL (no SQLite file is made)."""
    tmp = tmp_path_factory.mktemp("pgbot")
    world, stop = await start_world(tmp, DATABASE_URL=postgres_server.fresh_database())
    yield world
    await stop()
    assert not (tmp / "bot.sqlite3").exists()
