"""Prometheus metrics, scraped at ``GET /metrics`` on the bot's metrics listener
(``METRICS_HOST``/``METRICS_PORT``; never on the public web port).

One ``CollectorRegistry`` per set of services, never prometheus-client's process-wide
default, so several engines (tests) can live in one process. The job gauges are read from
the store when Prometheus scrapes (one indexed query over the active jobs), so they are right
after a restart too; the rest are counted where things happen:

- ``remixer_jobs{state}``, ``remixer_queue_depth``, ``remixer_jobs_in_flight``
- ``remixer_jobs_awaiting_webhook``: submits of unknown outcome, waiting (no slot held)
- ``remixer_modelslab_paused``: 1 while ModelsLab asked us to pause sending (a 429)
- ``remixer_web_rate_limited_total{listener}``: requests answered 429 by the rate limit
- ``remixer_modelslab_request_seconds{kind,outcome}``: submit/fetch latency, by outcome
- ``remixer_webhooks_total{result}``: accepted, refused, duplicate
- ``remixer_quota_refusals_total{reason}``: daily_limit, active_jobs
- ``remixer_deliveries_total{outcome}``: followup, channel, direct, failed
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from bot.jobs.models import IN_FLIGHT, JobStatus

# The text exposition format that every Prometheus reads (what prometheus-client's own
# server answers a scraper that asks for nothing newer); the names here all fit it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REQUEST_KINDS = ("submit", "fetch")
REQUEST_OUTCOMES = ("ok", "rate_limited", "rejected", "unknown", "not_sent")
WEBHOOK_RESULTS = ("accepted", "refused", "duplicate")
LISTENERS = ("public", "metrics")
QUOTA_REASONS = ("daily_limit", "active_jobs")
DELIVERY_OUTCOMES = ("followup", "channel", "direct", "failed")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 90.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.jobs = Gauge("remixer_jobs", "Jobs in the database, by state.", ["state"],
                          registry=r)
        self.queue_depth = Gauge("remixer_queue_depth", "Jobs waiting for a ModelsLab slot.",
                                 registry=r)
        self.jobs_in_flight = Gauge("remixer_jobs_in_flight",
                                    "Jobs at ModelsLab (submitted or processing).", registry=r)
        self.awaiting_webhook = Gauge(
            "remixer_jobs_awaiting_webhook", "Submits whose outcome is unknown, waiting for "
            "their webhook without holding an API slot.", registry=r)
        self.paused = Gauge("remixer_modelslab_paused",
                            "1 while ModelsLab asked us to pause sending (HTTP 429).", registry=r)
        self.web_rate_limited = Counter(
            "remixer_web_rate_limited", "Web requests answered 429 by the rate limit, by "
            "listener.", ["listener"], registry=r)
        self.requests = Histogram(
            "remixer_modelslab_request_seconds", "ModelsLab API request latency, by kind "
            "(submit/fetch) and outcome.", ["kind", "outcome"], buckets=LATENCY_BUCKETS,
            registry=r)
        self.webhooks = Counter("remixer_webhooks", "ModelsLab webhooks received, by result.",
                                ["result"], registry=r)
        self.quota_refusals = Counter("remixer_quota_refusals",
                                      "Commands refused by a member's quota, by reason.",
                                      ["reason"], registry=r)
        self.deliveries = Counter("remixer_deliveries",
                                  "Result delivery attempts, by where they went or failed.",
                                  ["outcome"], registry=r)
        self.process = Gauge("remixer_process_info", "This bot process (1): its name, its "
                             "gateway shards and its database.",
                             ["process", "shards", "database"], registry=r)
        # Every series exists from the start (at 0), so rates and alerts need no special case.
        for state in JobStatus:
            self.jobs.labels(state.value)
        for kind in REQUEST_KINDS:
            for outcome in REQUEST_OUTCOMES:
                self.requests.labels(kind, outcome)
        for counter, labels in ((self.webhooks, WEBHOOK_RESULTS),
                                (self.quota_refusals, QUOTA_REASONS),
                                (self.deliveries, DELIVERY_OUTCOMES),
                                (self.web_rate_limited, LISTENERS)):
            for label in labels:
                counter.labels(label)

    def observe_request(self, kind: str, outcome: str, seconds: float) -> None:
        self.requests.labels(kind, outcome).observe(seconds)

    def webhook(self, result: str) -> None:
        self.webhooks.labels(result).inc()

    def quota_refused(self, reason: str) -> None:
        self.quota_refusals.labels(reason).inc()

    def delivery(self, outcome: str) -> None:
        self.deliveries.labels(outcome).inc()

    def web_refused(self, listener: str) -> None:
        self.web_rate_limited.labels(listener).inc()

    def observe_jobs(self, counts: Mapping[JobStatus, int]) -> None:
        """Set the job gauges from the store's ``counts()``."""
        for state in JobStatus:
            self.jobs.labels(state.value).set(counts.get(state, 0))
        self.queue_depth.set(counts.get(JobStatus.QUEUED, 0))
        self.jobs_in_flight.set(sum(counts.get(s, 0) for s in IN_FLIGHT))

    def render(self) -> bytes:
        return generate_latest(self.registry)
