"""What the jobs layer needs from whoever shows results to members (the Discord layer).

The jobs layer never imports Discord code: the bot hands an implementation of this protocol
to the engine. Tests use a recording implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from bot.jobs.models import Job, Output


class DeliveryFailed(Exception):
    """The result could not be posted this time; the engine tries again later."""


class NotInServer(Exception):
    """The bot is no longer in the job's server: nothing can (or should) be posted there."""


class Delivery(Protocol):
    async def deliver(self, job: Job, outputs: Sequence[Output]) -> int | None:
        """Show the finished job (its images, or its error in words) to the member.

        Returns the id of the message that carries it, when there is one. Raises
        DeliveryFailed when nothing was posted and a later attempt may work, NotInServer when
        the bot has left the job's server.
        """

    async def find_delivered(self, job: Job) -> int | None:
        """After a crash during ``deliver``: the id of the message already posted, if any."""

    async def progress(self, job: Job, position: int | None, *,
                       paused_until: float | None = None) -> None:
        """The job moved (queued at ``position``, submitted, processing): update its status.
        ``paused_until``: ModelsLab asked us to pause, and sending resumes then (epoch s)."""
