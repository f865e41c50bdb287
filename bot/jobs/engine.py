"""The job engine: fair dispatch to ModelsLab, result tracking (webhook and poll), download,
hand-over for delivery, and recovery after a restart.

Every step is a transition in the store, so any step may be interrupted by a crash and
resumed by ``start()``; and every transition is conditional, so a webhook racing a poll, a
repeated webhook or a recovery racing a late answer ends in exactly one delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from bot.jobs.delivery import Delivery, NotInServer
from bot.jobs.downloads import DownloadError, OutputDownloader
from bot.jobs.leases import Leases
from bot.jobs.models import IN_FLIGHT, Job, JobStatus, NewJob, Output
from bot.jobs.store import JobStore, QuotaRule
from bot.logs import context_for, job_context
from bot.metrics import Metrics
from bot.modelslab.catalogue import endpoint as endpoint_named
from bot.modelslab.client import (
    MissingKey,
    ModelsLabClient,
    NotSent,
    OutcomeUnknown,
    RateLimited,
    Rejected,
    TransientError,
)
from bot.modelslab.responses import ApiResponse, ApiStatus

log = logging.getLogger(__name__)

WEBHOOK_ROUTE = "/webhooks/modelslab/{track_id}/{secret}"
NOT_CHARGED = "Your images were not charged."


@dataclass(frozen=True, slots=True)
class EnginePolicy:
    max_concurrency: int = 5
    webhook_grace: float = 15.0  # webhook mode: first poll this long after the eta
    first_poll: float = 1.0  # polling mode: at the eta, but never sooner than this
    poll_interval: float = 0.25  # after the first poll: this, growing by poll_backoff
    poll_backoff: float = 1.5
    max_poll_interval: float = 60.0
    max_poll_attempts: int = 60
    fetch_error_attempts: int = 3  # a fetch answering "error" this often ends the job
    unknown_outcome_wait: float = 900.0  # a submit that may have arrived: wait for its webhook
    # After a submit whose outcome is unknown, sending waits this long (doubling while they
    # keep coming, up to the maximum), so a brownout does not send the whole queue into limbo.
    unknown_outcome_pause: float = 1.0
    max_unknown_outcome_pause: float = 60.0
    max_pause: float = 300.0  # a 429's Retry-After is obeyed up to this many seconds
    not_sent_retry: float = 3.0
    max_submit_attempts: int = 5
    delivery_retry: float = 2.0
    max_delivery_attempts: int = 5  # in a row, before leaving the job to the sweep
    give_up_after_attempts: int = 30  # in all (about 25 minutes of sweeps): never delivered
    sweep_interval: float = 30.0
    status_interval: float = 10.0  # how often queued members hear their place in line
    # Status updates are sent apart from the job steps, this many at once (half as many
    # while results are being posted), only the latest text per job.
    status_concurrency: int = 10
    # A status edit Discord has not answered by then is dropped (a newer one follows); the
    # same interaction's result is never kept waiting behind it.
    status_timeout: float = 5.0
    retention_days: float = 90.0  # delivered jobs keep their bulky fields this long; 0: forever
    tick: float = 1.0


class JobEngine:
    def __init__(
        self,
        store: JobStore,
        client: ModelsLabClient,
        delivery: Delivery,
        downloader: OutputDownloader,
        *,
        policy: EnginePolicy | None = None,
        public_base_url: str | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        leases: Leases | None = None,
    ) -> None:
        self.store = store
        # Which process works on which job step (several processes on PostgreSQL).
        self.leases = leases or Leases(store, clock=clock)
        self.metrics = metrics or Metrics()
        self.client = client
        self.delivery = delivery
        self.downloader = downloader
        self.policy = policy or EnginePolicy()
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.clock = clock
        self._wake_dispatch = asyncio.Event()
        self._wake_poll = asyncio.Event()
        self._paused_until = 0.0  # ModelsLab asked us to pause (429): nothing is sent
        self._held_until = 0.0  # submits of unknown outcome: sending waits a little
        self._unknown_streak = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[Any]] = []
        self._finishing: set[str] = set()
        self._polling: set[str] = set()
        self._accepting = False
        self._stopping = False
        self._last_sweep = 0.0
        self._last_takeover = 0.0
        self.process_info: dict[str, Any] = {}  # for /healthz: which process, shards, database
        self._last_status = 0.0
        self._removed_guilds: set[int] = set()  # servers the bot was removed from
        # Status updates waiting to be sent: track id -> (job, place in line or None to look
        # it up). A newer update for a job replaces the older one and keeps its turn.
        self._status_pending: dict[str, tuple[Job, int | None]] = {}
        self._status_sending: set[str] = set()
        self._status_tasks: set[asyncio.Task[Any]] = set()
        self._wake_status = asyncio.Event()
        self._delivering = 0
        self._places: asyncio.Future[dict[str, int]] | None = None  # a read of the queue

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Resume every unfinished job, then start dispatching and polling."""
        await self.leases.start()
        await self.store.listen(self.wake)
        await self._recover()
        self._accepting = True
        self._loops = [asyncio.create_task(self._dispatch_loop(), name="jobs-dispatch"),
                       asyncio.create_task(self._poll_loop(), name="jobs-poll"),
                       asyncio.create_task(self._status_loop(), name="jobs-status")]

    def stop_accepting(self) -> None:
        """New commands are refused and nothing more is sent to ModelsLab (shutting down);
        webhooks and steps in progress still finish."""
        self._accepting = False

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking work, let in-flight steps finish (up to ``grace``), leave the rest
        resumable in the store."""
        self._accepting = False
        self._stopping = True
        self._wake_dispatch.set()
        self._wake_poll.set()
        for task in [*self._loops, *self._status_tasks]:
            task.cancel()
        await asyncio.gather(*self._loops, *self._status_tasks, return_exceptions=True)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            if pending:
                log.warning("stopping with %d job steps unfinished (%s); they resume at the "
                            "next start", len(pending),
                            ", ".join(sorted(t.get_name() for t in pending)[:5]))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.leases.stop()

    def wake(self) -> None:
        """Another process has new work or freed an API slot (LISTEN/NOTIFY)."""
        self._wake_dispatch.set()

    @property
    def accepting(self) -> bool:
        return self._accepting

    def webhook_url(self, track_id: str, secret: str) -> str | None:
        if self.public_base_url is None:
            return None
        return self.public_base_url + WEBHOOK_ROUTE.format(track_id=track_id, secret=secret)

    # --- intake -------------------------------------------------------------------------

    async def enqueue(self, new: NewJob, *, quota: QuotaRule | None = None) -> Job:
        """Persist a new job (queued) with its quota reservation, and wake the dispatcher.
        Nothing is sent before this. Raises QuotaExceeded or TooManyJobs under ``quota``."""
        job = await self.store.create(new, now=self.clock(), quota=quota)
        self._wake_dispatch.set()
        await self.store.notify()
        await self._first_status(job)
        return job

    def accept_result(self, track_id: str, response: ApiResponse) -> None:
        """An authenticated webhook's answer: handled after the HTTP reply is sent."""
        self._spawn(self._on_result(track_id, response), f"webhook-{track_id}")

    def adopt_request_id(self, track_id: str, request_id: str) -> None:
        """An authenticated webhook names ModelsLab's id for a job whose submit answer was
        lost. Its output links cannot be checked against anything the job was told, so they
        are not used: the job becomes processing under that id and its outputs are taken
        from the API's own fetch answer, at once."""
        self._spawn(self._adopt(track_id, request_id), f"adopt-{track_id}")

    async def _adopt(self, track_id: str, request_id: str) -> None:
        now = self.clock()
        moved = await self.store.mark_processing(
            track_id, request_id=request_id, eta=None, fetch_url=None, future_links=(),
            next_poll_at=now, now=now)
        if moved is not None:
            log.info("job %s: ModelsLab's id %s learnt from its webhook; fetching the result",
                     track_id, request_id)
            self._wake_poll.set()

    # --- dispatch -----------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while not self._stopping:
            self._wake_dispatch.clear()
            try:
                await self._dispatch_ready()
                wait = await self._dispatch_wait()
            except Exception:
                log.exception("dispatch step failed; trying again shortly")
                wait = self.policy.tick
            await _wait(self._wake_dispatch, wait)

    async def _dispatch_ready(self) -> None:
        while self._accepting:
            now = self.clock()
            if now < max(self._paused_until, self._held_until):
                return
            if await self.store.in_flight() >= self.policy.max_concurrency:
                return
            claimed = await self.leases.claim(now, self.policy.max_concurrency)
            if claimed is None:
                return
            job, secret = claimed
            self._spawn(self._submit(job, secret), f"submit-{job.track_id}")

    async def _dispatch_wait(self) -> float:
        now = self.clock()
        resume = max(self._paused_until, self._held_until)
        if now < resume:
            return max(0.01, resume - now)
        next_ready = await self.store.next_queued_time()
        if next_ready is not None and next_ready > now:
            return max(0.01, min(self.policy.tick, next_ready - now))
        return self.policy.tick

    async def _submit(self, job: Job, secret: str) -> None:
        track_id = job.track_id
        endpoint = endpoint_named(job.endpoint)
        webhook = self.webhook_url(track_id, secret)
        try:
            response = await self.client.submit(endpoint, job.payload, webhook=webhook)
        except RateLimited as exc:
            pause = self._pause_for(exc)
            until = self.clock() + pause
            self._paused_until = max(self._paused_until, until)
            log.warning("job %s: ModelsLab rate limit; back in the queue, sending paused for "
                        "%.0fs", track_id, pause)
            await self.store.requeue(track_id, not_before=until)
            self._last_status = 0.0  # queued members hear about the pause now
            self._wake_status.set()
            self._wake_poll.set()
        except NotSent as exc:
            if job.submit_attempts >= self.policy.max_submit_attempts:
                await self._fail(track_id, f"ModelsLab could not be reached ({exc}). "
                                 + NOT_CHARGED)
            else:
                log.warning("job %s: %s; will try again", track_id, exc)
                await self.store.requeue(
                    track_id, not_before=self.clock()
                    + self.policy.not_sent_retry * job.submit_attempts)
        except Rejected as exc:
            await self._fail(track_id, f"ModelsLab refused the job: {_shorten(exc.message)}. "
                             + NOT_CHARGED)
        except MissingKey as exc:
            await self._fail(track_id, str(exc)[:1].upper() + str(exc)[1:] + ".")
        except OutcomeUnknown as exc:
            # Submitting again could charge twice; only the webhook can still tell us. The
            # job waits for it without holding a slot, and sending slows down a little while
            # ModelsLab keeps answering like this.
            self._unknown_streak += 1
            hold = min(self.policy.max_unknown_outcome_pause,
                       self.policy.unknown_outcome_pause * 2 ** (self._unknown_streak - 1))
            self._held_until = max(self._held_until, self.clock() + hold)
            if webhook is not None:
                log.warning("job %s: %s; waiting for its webhook without holding a slot",
                            track_id, exc)
                await self.store.wait_for_webhook(
                    track_id, until=self.clock() + self.policy.unknown_outcome_wait)
            else:
                await self._fail(track_id, f"ModelsLab did not answer ({exc}). "
                                 + NOT_CHARGED)
        except Exception:
            log.exception("job %s: submit failed unexpectedly", track_id)
            await self._fail(track_id, "Something went wrong while sending the job. "
                             + NOT_CHARGED)
        else:
            self._unknown_streak = 0
            await self._on_submitted(job, response, webhook is not None)
        finally:
            self._wake_dispatch.set()
            await self.leases.release(track_id)

    def _pause_for(self, exc: RateLimited) -> float:
        """ModelsLab's Retry-After, within reason: a day-long answer pauses at most
        ``max_pause``."""
        return max(0.0, min(exc.retry_after, self.policy.max_pause))

    def paused_until(self) -> float | None:
        """When sending resumes, while ModelsLab asked us to pause (a 429); else None."""
        return self._paused_until if self._paused_until > self.clock() else None

    async def _on_submitted(self, job: Job, response: ApiResponse, webhook: bool) -> None:
        if response.status is ApiStatus.SUCCESS and response.output:
            await self._on_result(job.track_id, response)
            return
        now = self.clock()
        eta = response.eta if response.eta is not None else 10.0
        if webhook:
            first_poll = now + eta + self.policy.webhook_grace
        else:
            first_poll = now + max(eta, self.policy.first_poll)
        moved = await self.store.mark_processing(
            job.track_id, request_id=response.request_id, eta=eta,
            fetch_url=response.fetch_result, future_links=response.future_links,
            next_poll_at=first_poll, now=now)
        if moved:
            self._wake_poll.set()
            self._progress(moved)

    # --- results ------------------------------------------------------------------------

    async def _on_result(self, track_id: str, response: ApiResponse) -> None:
        now = self.clock()
        if response.status is ApiStatus.SUCCESS:
            if not response.output:
                moved = await self.store.mark_failed(
                    track_id, error="ModelsLab reported success but sent no images. "
                    + NOT_CHARGED, now=now)
            else:
                moved = await self.store.mark_succeeded(
                    track_id, outputs=response.output, nsfw=response.nsfw, seed=response.seed,
                    request_id=response.request_id, now=now)
        elif response.status in (ApiStatus.FAILED, ApiStatus.ERROR):
            moved = await self.store.mark_failed(
                track_id, error=f"ModelsLab could not make the image: "
                f"{_shorten(response.readable_error)}. " + NOT_CHARGED, now=now,
                only_from=IN_FLIGHT)
        else:
            return  # still processing: nothing to do
        if moved is not None:
            self._wake_dispatch.set()  # an API slot is free
            await self.store.notify()
            await self._finish(track_id, moved)

    async def _fail(self, track_id: str, error: str) -> None:
        moved = await self.store.mark_failed(track_id, error=error, now=self.clock())
        if moved is not None:
            self._wake_dispatch.set()
            await self.store.notify()
            await self._finish(track_id, moved)

    async def _finish(self, track_id: str, job: Job | None = None) -> None:
        """Download (if needed) and deliver; one at a time per job in this process.

        ``job`` is the row as the caller's transition left it, when it has one: the hot path
        (webhook -> download -> delivery) then reads nothing back from the database."""
        if track_id in self._finishing:
            return
        self._finishing.add(track_id)
        leased = False
        try:
            leased = await self.leases.acquire(track_id, "deliver")
            if not leased:
                return  # another process is finishing it
            if self.leases.shared:  # it may have been finished elsewhere meanwhile
                job = None
            job = job or await self.store.get(track_id)
            if job is None:
                return
            outputs: list[Output] | None = None
            if job.status is JobStatus.SUCCEEDED and not job.downloaded:
                try:
                    outputs = await self.downloader.download_all(track_id, job.outputs)
                except DownloadError as exc:
                    job = await self.store.mark_failed(
                        track_id, error=f"The result could not be downloaded: {exc}.",
                        now=self.clock())
                else:
                    job = await self.store.save_outputs(track_id, outputs)
                if job is None:
                    return
            await self._deliver(job, outputs)
        finally:
            self._finishing.discard(track_id)
            if leased:
                await self.leases.release(track_id)

    async def _deliver(self, job: Job, outputs: list[Output] | None) -> None:
        track_id = job.track_id
        if job.requester.guild_id in self._removed_guilds:
            await self._drop(job)
            return
        for attempt in range(1, self.policy.max_delivery_attempts + 1):
            if job.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
                return
            if job.delivering_since is not None:
                # A delivery was under way when the bot stopped: it may have been posted.
                existing = await self.delivery.find_delivered(job)
                if existing is not None:
                    await self.store.mark_delivered(track_id, message_id=existing,
                                                    now=self.clock())
                    return
            if job.delivery_attempts >= self.policy.give_up_after_attempts:
                await self._give_up(job)
                return
            started = await self.store.begin_delivery(track_id, now=self.clock())
            if started is None:
                return
            if started.status is JobStatus.FAILED:
                outputs = []
            elif outputs is None:
                outputs = await self.store.outputs(track_id)
            self._status_pending.pop(track_id, None)
            self._delivering += 1
            try:
                message_id = await self.delivery.deliver(started, outputs)
            except NotInServer:
                self._delivering -= 1
                await self._drop(started)
                return
            except Exception as exc:
                self._delivering -= 1
                self.metrics.delivery("failed")
                await self.store.end_delivery_attempt(track_id)
                log.warning("job %s: delivery attempt %d failed: %s", track_id, attempt, exc)
                await asyncio.sleep(self.policy.delivery_retry * attempt)
                job = await self.store.get(track_id) or job
                continue
            except BaseException:
                self._delivering -= 1
                raise
            self._delivering -= 1
            await self.store.mark_delivered(track_id, message_id=message_id, now=self.clock())
            return
        log.error("job %s: not delivered after %d attempts; will retry later",
                  track_id, self.policy.max_delivery_attempts)

    async def _drop(self, job: Job) -> None:
        """The bot is no longer in the job's server: nothing is sent there (nor to the member,
        who asked there)."""
        if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            log.warning("job %s: finished (%s) but Remixer is no longer in server %s; the "
                        "result is dropped", job.track_id, job.status, job.requester.guild_id)
            await self.store.mark_delivered(job.track_id, message_id=None, now=self.clock())

    # --- server membership ----------------------------------------------------------------

    async def leave_guild(self, guild_id: int) -> None:
        """Remixer was removed from a server: its queued jobs are cancelled and refunded at
        once; jobs already at ModelsLab finish there, and their results are dropped."""
        self._removed_guilds.add(guild_id)
        now = self.clock()
        cancelled = await self.store.cancel_queued(
            guild_id, error="Remixer was removed from this server before the job started. "
            + NOT_CHARGED, now=now)
        for job in cancelled:
            await self.store.mark_delivered(job.track_id, message_id=None, now=now)
        if cancelled:
            log.warning("removed from server %s: %d queued jobs cancelled and refunded (%s)",
                        guild_id, len(cancelled), ", ".join(j.track_id for j in cancelled))
        for job in await self.store.undelivered():
            if job.requester.guild_id == guild_id and job.track_id not in self._finishing:
                self._spawn(self._finish(job.track_id), f"finish-{job.track_id}")

    def rejoin_guild(self, guild_id: int) -> None:
        """Remixer is in the server (again): its jobs are delivered as usual."""
        self._removed_guilds.discard(guild_id)

    async def keep_guilds(self, guild_ids: set[int], *,
                          serves: Callable[[int], bool] | None = None) -> None:
        """At connection: jobs of servers Remixer is no longer in are handled as if it had
        just been removed from them (``serves``: the servers this process's shards carry)."""
        for guild_id in await self.store.unfinished_guilds() - set(guild_ids):
            if serves is None or serves(guild_id):
                await self.leave_guild(guild_id)

    async def _give_up(self, job: Job) -> None:
        """Neither the channel nor the member could be reached, for a long time: a result is
        refunded (moved to failed), and the job is closed so the sweep stops trying."""
        log.error("job %s: giving up delivery after %d attempts", job.track_id,
                  job.delivery_attempts)
        if job.status is JobStatus.SUCCEEDED:
            await self.store.mark_failed(
                job.track_id, error="The result could not be posted in the channel or sent "
                "to you directly. " + NOT_CHARGED, now=self.clock())
        await self.store.mark_delivered(job.track_id, message_id=None, now=self.clock())

    # --- polling ------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while not self._stopping:
            self._wake_poll.clear()
            wait = self.policy.tick
            try:
                now = self.clock()
                for job in await self.store.due_polls(now):
                    if job.track_id not in self._polling:
                        self._polling.add(job.track_id)
                        self._spawn(self._poll(job), f"poll-{job.track_id}")
                if self.leases.shared and now - self._last_takeover >= self.leases.period / 2:
                    self._last_takeover = now
                    await self._take_over()
                if now - self._last_sweep >= self.policy.sweep_interval:
                    self._last_sweep = now
                    await self._sweep()
                next_poll = await self.store.next_poll_time()
                if next_poll is not None:
                    wait = max(0.01, min(wait, next_poll - self.clock()))
            except Exception:
                log.exception("poll step failed; trying again shortly")
            await _wait(self._wake_poll, wait)

    def _backoff(self, attempts: int) -> float:
        # A job past its eta is about done: poll again soon, then less and less often.
        return min(self.policy.max_poll_interval,
                   self.policy.poll_interval * self.policy.poll_backoff ** attempts)

    async def _poll(self, job: Job) -> None:
        track_id = job.track_id
        try:
            if job.status is JobStatus.SUBMITTED:
                await self._fail(track_id, "ModelsLab never confirmed this job. " + NOT_CHARGED)
                return
            if job.poll_attempts >= self.policy.max_poll_attempts or (
                    job.request_id is None and job.fetch_url is None):
                await self._fail(track_id, "ModelsLab did not finish the job in time. "
                                 + NOT_CHARGED)
                return
            endpoint = endpoint_named(job.endpoint)
            try:
                response = await self.client.fetch(endpoint, job.request_id,
                                                   fetch_url=job.fetch_url)
            except RateLimited as exc:
                await self.store.schedule_poll(track_id, at=self.clock() + self._pause_for(exc))
                return
            except TransientError as exc:
                log.info("job %s: fetch failed (%s); polling again later", track_id, exc)
                await self.store.schedule_poll(
                    track_id, at=self.clock() + self._backoff(job.poll_attempts))
                return
            except MissingKey as exc:
                await self._fail(track_id, str(exc))
                return
            if response.status is ApiStatus.ERROR and (
                    job.poll_attempts + 1 < self.policy.fetch_error_attempts):
                await self.store.schedule_poll(
                    track_id, at=self.clock() + self._backoff(job.poll_attempts))
            elif response.ended and (response.output or response.status is not ApiStatus.SUCCESS):
                await self._on_result(track_id, response)
            else:
                await self.store.schedule_poll(
                    track_id, at=self.clock() + self._backoff(job.poll_attempts))
        finally:
            self._polling.discard(track_id)
            self._wake_poll.set()

    # --- recovery -----------------------------------------------------------------------

    async def _recover(self) -> None:
        now = self.clock()
        await self.store.purge_delivered_outputs()
        counts: dict[str, int] = {}
        held = await self.leases.held_elsewhere()  # other live processes' jobs
        for job in await self.store.unfinished():
            if job.track_id in held:
                continue
            counts[job.status] = counts.get(job.status, 0) + 1
            if job.status is JobStatus.SUBMITTED:
                # The submit may or may not have reached ModelsLab before the stop.
                if self.public_base_url is not None:
                    until = max(job.next_poll_at or 0.0,
                                (job.submitted_at or now) + self.policy.unknown_outcome_wait)
                    await self.store.wait_for_webhook(job.track_id, until=until)
                else:
                    await self._fail_later(job.track_id, "The bot restarted while sending "
                                           "this job, and ModelsLab never confirmed it. "
                                           + NOT_CHARGED)
            elif job.status is JobStatus.PROCESSING:
                await self.store.schedule_poll(job.track_id, at=now)
            elif job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
                self._spawn(self._finish(job.track_id), f"finish-{job.track_id}")
        if counts:
            log.info("resuming unfinished jobs: %s",
                     ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))

    async def _take_over(self) -> None:
        """Jobs a dead process was working on (its leases ran out), resumed as a restart
        resumes them: a submit of unknown outcome waits for its webhook, never resent."""
        now = self.clock()
        for job in await self.leases.orphans():
            if job.track_id in self._finishing:
                continue
            log.info("job %s: taken over from a process that stopped", job.track_id)
            if job.status is JobStatus.SUBMITTED:
                if not await self.leases.acquire(job.track_id, "recover"):
                    continue
                try:
                    if self.public_base_url is not None:
                        await self.store.wait_for_webhook(
                            job.track_id, until=(job.submitted_at or now)
                            + self.policy.unknown_outcome_wait)
                    else:
                        await self._fail_later(job.track_id, "The bot restarted while "
                                               "sending this job, and ModelsLab never "
                                               "confirmed it. " + NOT_CHARGED)
                finally:
                    await self.leases.release(job.track_id)
            else:
                self._spawn(self._finish(job.track_id), f"finish-{job.track_id}")

    async def _fail_later(self, track_id: str, error: str) -> None:
        moved = await self.store.mark_failed(track_id, error=error, now=self.clock())
        if moved is not None:
            self._spawn(self._finish(track_id, moved), f"finish-{track_id}")

    async def _sweep(self) -> None:
        """Deliveries that failed earlier get another chance; delivered images are dropped,
        and so are the bulky fields of jobs delivered longer ago than the retention period."""
        await self.store.purge_delivered_outputs()
        if self.policy.retention_days > 0:
            await self.store.apply_retention(self.clock() - self.policy.retention_days * 86400)
        for job in await self.store.undelivered():
            if job.track_id not in self._finishing:
                self._spawn(self._finish(job.track_id), f"finish-{job.track_id}")

    async def _queue_status(self) -> None:
        """Tell waiting members where they are in line: one read of the queue in its fair
        order, handed to the status sender (the delivery skips unchanged text)."""
        for job, position in await self.store.queued_with_positions():
            self._progress(job, position)

    # --- status updates -----------------------------------------------------------------

    def _progress(self, job: Job, position: int | None = None) -> None:
        """Note that ``job``'s member should hear how it is doing. Never waits on Discord:
        the status sender takes it from here, and only the latest update per job is sent."""
        self._status_pending[job.track_id] = (job, position)
        self._wake_status.set()

    async def _status_loop(self) -> None:
        """Sends status updates apart from dispatch, polling and delivery: a few at a time,
        only one at a time while results are being posted, never two for the same job."""
        while not self._stopping:
            now = self.clock()
            if now - self._last_status >= self.policy.status_interval and self._accepting:
                self._last_status = now
                try:
                    if await self.store.lead("queue-status"):  # one process of the bot
                        await self._queue_status()
                except Exception:
                    log.exception("reading the queue for status updates failed")
            limit = self.policy.status_concurrency
            if self._delivering:  # results go first: status updates take half the room
                limit = max(1, limit // 2)
            ready = [t for t in self._status_pending if t not in self._status_sending]
            if not ready or len(self._status_tasks) >= limit:
                self._wake_status.clear()
                await _wait(self._wake_status, 0.05 if ready else min(
                    self.policy.tick, self.policy.status_interval))
                continue
            try:
                await self._send_next_status(ready[0])
            except Exception:
                log.exception("status update failed")

    async def _first_status(self, job: Job) -> None:
        """The command's own answer: "queued, #n in line". Awaited by the command that asked
        (never by a job step), so the member sees it before anything newer; later updates for
        the job wait until it is out, and Discord gets ``status_timeout`` to take it."""
        self._status_sending.add(job.track_id)
        try:
            position = await self._place_of(job.track_id)
            await self._send_status(job, position)
        finally:
            self._status_sending.discard(job.track_id)
            self._wake_status.set()

    async def _place_of(self, track_id: str) -> int | None:
        """A new job's place in line. Commands arriving together share one read of the queue
        (a burst of a thousand makes a few reads, not a thousand); a job written after the
        read under way began waits for the next one."""
        for _ in range(2):
            if self._places is None:
                self._places = asyncio.ensure_future(self.store.queue_places())
                self._places.add_done_callback(self._places_read)
            try:
                places = await asyncio.shield(self._places)
            except Exception:
                log.exception("reading the queue for a place in line failed")
                return None
            if track_id in places:
                return places[track_id]
        return None

    def _places_read(self, read: asyncio.Future[dict[str, int]]) -> None:
        if self._places is read:
            self._places = None
        if not read.cancelled():
            read.exception()  # retrieved: a failed read only means no number this time

    async def _send_next_status(self, track_id: str) -> None:
        job, position = self._status_pending.pop(track_id)
        if track_id in self._finishing:
            return  # its result is being posted; a status line now would only be stale
        if job.status is JobStatus.QUEUED and position is None:
            # Look up the place of this and every other waiting job at once.
            for queued, place in await self.store.queued_with_positions():
                if queued.track_id == track_id:
                    job, position = queued, place
                elif queued.track_id in self._status_pending:
                    self._status_pending[queued.track_id] = (queued, place)
            if position is None:
                return  # no longer waiting: a newer update follows
        self._status_sending.add(track_id)
        task = asyncio.create_task(self._send_status(job, position), name=f"status-{track_id}",
                                   context=context_for(track_id))
        self._status_tasks.add(task)

        def done(finished: asyncio.Task[Any]) -> None:
            self._status_tasks.discard(finished)
            self._status_sending.discard(track_id)
            self._wake_status.set()

        task.add_done_callback(done)

    async def _send_status(self, job: Job, position: int | None) -> None:
        with job_context(job.track_id):
            try:
                async with asyncio.timeout(self.policy.status_timeout):
                    await self._tell_progress(job, position)
            except TimeoutError:
                log.info("job %s: status update not answered in time; dropped", job.track_id)
            except Exception:
                log.exception("job %s: status update failed", job.track_id)

    # --- helpers ------------------------------------------------------------------------

    async def _tell_progress(self, job: Job, position: int | None) -> None:
        """A queued member also hears when ModelsLab asked us to pause, and until when."""
        paused = self.paused_until() if job.status is JobStatus.QUEUED else None
        if paused is None:
            await self.delivery.progress(job, position)
        else:
            await self.delivery.progress(job, position, paused_until=paused)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Every job step is named ``<step>-<track_id>``; its log records carry the job."""
        track_id = name.partition("-")[2]
        task = asyncio.create_task(coro, name=name,
                                   context=context_for(track_id) if track_id else None)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())


def _shorten(text: str, limit: int = 800) -> str:
    """ModelsLab's own words, kept short enough to show in a Discord message."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until ``event`` is set or ``seconds`` pass. (``asyncio.wait_for`` on Python 3.11 can
    swallow a cancellation that races the event, which would keep a loop from stopping.)"""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
