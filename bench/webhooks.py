"""Benchmark: webhook handling throughput, and latency from a webhook's arrival to the job's
hand-over for delivery (after its images are downloaded and stored).

The job services run in their own process, started exactly as in the crash tests; the fake
ModelsLab (API and CDN) and the load generator run in this one. Everything is on loopback.

    .venv/bin/python -m bench.webhooks [--jobs 500] [--concurrency 32] [--samples 1]

It prints its figures; it asserts nothing (timings on a shared machine are not test material).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bot.jobs.models import JobStatus
from bot.jobs.store import JobStore
from tests.fakes import FakeModelsLab
from tests.support.jobs import FileDelivery, cdn_host, new_job
from tests.support.processes import EngineProcess

ROOT = Path(__file__).resolve().parents[1]
IN_FLIGHT = 100  # the largest MODELSLAB_MAX_CONCURRENCY the settings allow


async def fire(fake: FakeModelsLab, batch: list[str], sent: dict[str, float],
               concurrency: int) -> float:
    """Finish each job at the fake, then post its webhook as ModelsLab would; returns the
    seconds until every post was answered."""
    by_track = {s.body["track_id"]: s for s in fake.submits}
    queue: asyncio.Queue = asyncio.Queue()
    for track_id in batch:
        submit = by_track[track_id]
        request_id = submit.response.body["id"]
        await fake.complete(request_id)  # outputs now on the CDN; the fake sends no webhook
        queue.put_nowait((track_id, submit.body["webhook"],
                          fake.webhook_body(fake.job(request_id))))

    async def worker(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            track_id, hook, body = queue.get_nowait()
            sent[track_id] = time.time()
            async with http.post(hook, json=body) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"webhook answered {resp.status}")

    began = time.time()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return time.time() - began


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def settle(read, done, within: float = 120.0) -> None:
    """Poll another process's progress (a database or file it writes) until ``done``."""
    deadline = time.monotonic() + within
    while True:
        if done(await read()) or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.05)


def _async(fn):
    async def call():
        return fn()
    return call


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(jobs: int, concurrency: int, samples: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="remixer-bench-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with FakeModelsLab() as fake:
        fake.send_webhooks = False
        fake.eta = 3600  # nobody polls during the run: only webhooks are measured
        env = {**os.environ, "DISCORD_TOKEN": "unused", "MODELSLAB_API_KEY": fake.api_key,
               "MODELSLAB_ENTERPRISE_API_KEY": fake.enterprise_key,
               "MODELSLAB_BASE_URL": fake.base_url, "PUBLIC_BASE_URL": url,
               "WEB_HOST": "127.0.0.1", "WEB_PORT": str(port), "METRICS_PORT": str(free_port()),
               "DATABASE_PATH": str(tmp / "bot.sqlite3"),
               "ALLOW_LOOPBACK_OUTBOUND": "1", "MODELSLAB_OUTPUT_HOSTS": cdn_host(fake),
               "DELIVERIES_FILE": str(tmp / "deliveries.jsonl"),
               "MODELSLAB_MAX_CONCURRENCY": "100", "LOG_LEVEL": "WARNING",
               "PYTHONPATH": str(ROOT)}
        engine = EngineProcess(env, tmp / "engine.log")
        engine.start()
        try:
            await engine.ready(url)
            store = await JobStore.open(tmp / "bot.sqlite3")
            sent: dict[str, float] = {}
            track_ids: list[str] = []
            route_seconds = 0.0
            # In rounds of at most MODELSLAB_MAX_CONCURRENCY: that many can be at the API.
            for first in range(0, jobs, IN_FLIGHT):
                size = min(IN_FLIGHT, jobs - first)
                batch = [(await store.create(new_job(fake.cdn_url, user=n % 50,
                                                     samples=samples))).track_id
                         for n in range(first, first + size)]
                track_ids += batch
                await settle(lambda: store.count(JobStatus.PROCESSING), lambda n, k=size: n >= k)
                route_seconds += await fire(fake, batch, sent, concurrency)
                await settle(lambda: store.count(JobStatus.PROCESSING), lambda n: n == 0)
            await store.close()
            deliveries = FileDelivery(tmp / "deliveries.jsonl")
            await settle(_async(lambda: len(deliveries.lines())), lambda n: n >= jobs)
            lines = deliveries.lines()
            handed = {line["track_id"]: line["at"] for line in lines}
            latencies = [(handed[t] - sent[t]) * 1000 for t in track_ids if t in handed]
            rss = peak_rss_mib(engine.proc.pid)
        finally:
            engine.terminate()

    dupes = len(lines) - len(handed)
    print(f"jobs: {jobs} ({samples} image(s) each), webhook senders: {concurrency}, "
          f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    print(f"webhook route throughput:   {jobs / route_seconds:8.1f} webhooks/s "
          f"({route_seconds:.2f} s for all answers)")
    print(f"arrival -> hand-over p50:   {statistics.median(latencies):8.1f} ms")
    print(f"arrival -> hand-over p99:   {percentile(latencies, 99):8.1f} ms")
    print(f"arrival -> hand-over max:   {max(latencies):8.1f} ms")
    print(f"engine process peak RSS:    {rss:8.1f} MiB")
    print(f"lost: {jobs - len(handed)}, duplicated: {dupes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--samples", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(run(args.jobs, args.concurrency, args.samples))


if __name__ == "__main__":
    main()
