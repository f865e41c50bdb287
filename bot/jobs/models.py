"""The job: what a member asked for, where it stands, and which moves between states are legal."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    QUEUED = "queued"  # accepted, waiting for an API slot
    SUBMITTED = "submitted"  # the submit is being (or may have been) sent
    PROCESSING = "processing"  # ModelsLab accepted it and is working on it
    SUCCEEDED = "succeeded"  # outputs are known; being downloaded or waiting for delivery
    FAILED = "failed"  # ended without images; the member still has to be told
    DELIVERED = "delivered"  # the member has the result (or the failure): final


# Every legal move. A transition names the states it may start from; anything else is a
# no-op, which is what makes duplicates (webhook + poll, repeated webhooks) harmless.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.SUBMITTED, JobStatus.FAILED}),
    JobStatus.SUBMITTED: frozenset(
        {JobStatus.QUEUED, JobStatus.PROCESSING, JobStatus.SUCCEEDED, JobStatus.FAILED}
    ),
    JobStatus.PROCESSING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset({JobStatus.DELIVERED, JobStatus.FAILED}),
    JobStatus.FAILED: frozenset({JobStatus.DELIVERED}),
    JobStatus.DELIVERED: frozenset(),
}

IN_FLIGHT = (JobStatus.SUBMITTED, JobStatus.PROCESSING)
UNFINISHED = (JobStatus.QUEUED, JobStatus.SUBMITTED, JobStatus.PROCESSING,
              JobStatus.SUCCEEDED, JobStatus.FAILED)


def sources_of(target: JobStatus) -> tuple[JobStatus, ...]:
    """The states from which ``target`` may be reached."""
    return tuple(s for s, targets in TRANSITIONS.items() if target in targets)


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asked, and where the answer goes."""

    user_id: int
    guild_id: int | None
    channel_id: int
    interaction_token: str | None = None
    token_expires_at: float | None = None  # epoch seconds; Discord tokens live 15 minutes
    application_id: int | None = None


@dataclass(frozen=True, slots=True)
class NewJob:
    """Everything needed to create a job row before anything is sent."""

    endpoint: str
    payload: dict[str, Any]  # the exact body, without key and webhook
    requester: Requester
    images: int  # how many images it asks for (samples): what quotas count
    options: dict[str, Any] = field(default_factory=dict)  # the member's options, for re-rolls
    parent_track_id: str | None = None


@dataclass(frozen=True, slots=True)
class Job:
    track_id: str
    endpoint: str
    status: JobStatus
    payload: dict[str, Any]
    options: dict[str, Any]
    requester: Requester
    images: int
    parent_track_id: str | None
    request_id: str | None
    fetch_url: str | None
    eta: float | None
    outputs: tuple[str, ...]
    future_links: tuple[str, ...]
    nsfw: bool
    seed: int | None
    error: str | None
    created_at: float
    submitted_at: float | None
    processing_at: float | None
    finished_at: float | None
    delivered_at: float | None
    submit_attempts: int
    poll_attempts: int
    next_poll_at: float | None
    not_before: float | None
    downloaded: bool
    delivering_since: float | None
    delivery_attempts: int
    result_message_id: int | None
    result_at: float | None

    @property
    def prompt(self) -> str:
        return str(self.payload.get("prompt", ""))

    @classmethod
    def from_row(cls, row: Any) -> Job:
        return cls(
            track_id=row["track_id"],
            endpoint=row["endpoint"],
            status=JobStatus(row["status"]),
            payload=json.loads(row["payload"]),
            options=json.loads(row["options"]),
            requester=Requester(
                user_id=row["user_id"],
                guild_id=row["guild_id"],
                channel_id=row["channel_id"],
                interaction_token=row["interaction_token"],
                token_expires_at=row["token_expires_at"],
                application_id=row["application_id"],
            ),
            images=row["images"],
            parent_track_id=row["parent_track_id"],
            request_id=row["request_id"],
            fetch_url=row["fetch_url"],
            eta=row["eta"],
            outputs=tuple(json.loads(row["outputs"])),
            future_links=tuple(json.loads(row["future_links"])),
            nsfw=bool(row["nsfw"]),
            seed=row["seed"],
            error=row["error"],
            created_at=row["created_at"],
            submitted_at=row["submitted_at"],
            processing_at=row["processing_at"],
            finished_at=row["finished_at"],
            delivered_at=row["delivered_at"],
            submit_attempts=row["submit_attempts"],
            poll_attempts=row["poll_attempts"],
            next_poll_at=row["next_poll_at"],
            not_before=row["not_before"],
            downloaded=bool(row["downloaded"]),
            delivering_since=row["delivering_since"],
            delivery_attempts=row["delivery_attempts"],
            result_message_id=row["result_message_id"],
            result_at=row["result_at"],
        )


@dataclass(frozen=True, slots=True)
class Output:
    """One downloaded image, kept in the database until the job is delivered."""

    index: int
    filename: str
    content_type: str
    data: bytes
    source_url: str
