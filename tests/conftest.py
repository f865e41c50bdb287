"""Shared fixtures: the local fake ModelsLab and a client pointed at it."""

from __future__ import annotations

import aiohttp
import pytest
from pydantic import SecretStr

from bot.modelslab.client import ModelsLabClient
from tests.fakes import FakeModelsLab
from tests.support.jobs import RecordingDelivery, RunningEngine, cdn_outputs, make_client


@pytest.fixture
async def fake():
    async with FakeModelsLab() as server:
        yield server


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def client(fake: FakeModelsLab, http: aiohttp.ClientSession) -> ModelsLabClient:
    return ModelsLabClient(
        http,
        base_url=fake.base_url,
        api_key=SecretStr(fake.api_key),
        enterprise_key=SecretStr(fake.enterprise_key),
        submit_timeout=aiohttp.ClientTimeout(total=3, sock_connect=2),
        fetch_timeout=aiohttp.ClientTimeout(total=3, sock_connect=2),
    )


@pytest.fixture
def delivery() -> RecordingDelivery:
    return RecordingDelivery()


@pytest.fixture
def running(tmp_path, fake, http, delivery, unused_tcp_port):
    """A factory for the job services (real store, web server on loopback) against the fake;
    keyword arguments reach RunningEngine (webhooks, policy, delivery...)."""
    def make(**kw) -> RunningEngine:
        client = make_client(http, fake.base_url, fake.api_key, fake.enterprise_key)
        return RunningEngine(db_path=tmp_path / "bot.sqlite3", client=client,
                             delivery=kw.pop("delivery", delivery), session=http,
                             port=unused_tcp_port, output_hosts=cdn_outputs(fake), **kw)
    return make


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL server on loopback for the whole session (started when a test
    first asks for it)."""
    from tests.support.postgres import running_postgres

    with running_postgres() as server:
        yield server
