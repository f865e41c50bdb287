"""Shared fixtures: the local fake ModelsLab and a client pointed at it."""

from __future__ import annotations

import aiohttp
import pytest
from pydantic import SecretStr

from bot.modelslab.client import ModelsLabClient
from tests.fakes import FakeModelsLab


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
