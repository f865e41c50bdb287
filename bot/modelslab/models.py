"""The models that exist: ModelsLab's model lists, cached in memory and refreshed in the
background.

The lists are read at start and every refresh interval (``MODEL_LIST_REFRESH``), never on a
keystroke: autocomplete only filters what is cached. The standard key reads
``/api/v4/dreambooth/model_list`` (public models), the enterprise key
``/api/v1/enterprise/get_all_models`` (the models loaded on the customer's servers).

When no list could be read yet, the bot says so and behaves as before: any well-formed
model id is accepted. A list that could be read once is kept when a later refresh fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import time
from collections.abc import Iterable
from typing import Any

from bot.modelslab.catalogue import MODEL_ID_MAX_LENGTH, MODEL_ID_PATTERN, KeyKind
from bot.modelslab.client import ModelsLabClient, ModelsLabError

log = logging.getLogger(__name__)

MAX_CHOICES = 25  # Discord's limit on autocomplete answers
RETRY_AFTER_FAILURE = 60.0  # a failed read is tried again this soon (capped by the interval)


def is_lora(record: Any) -> bool:
    category = record.get("model_category") if isinstance(record, dict) else None
    return isinstance(category, str) and "lora" in category.lower()


def model_ids(records: Iterable[Any]) -> list[str]:
    """The well-formed model ids in a list of records (or plain strings), in order, once."""
    seen: dict[str, None] = {}
    for record in records:
        raw = record.get("model_id") if isinstance(record, dict) else record
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = str(raw)
        if not isinstance(raw, str):
            continue
        text = raw.strip()
        if text and len(text) <= MODEL_ID_MAX_LENGTH and MODEL_ID_PATTERN.match(text):
            seen.setdefault(text, None)
    return list(seen)


def rank(models: Iterable[str], typed: str, limit: int = MAX_CHOICES) -> list[str]:
    """Models containing ``typed`` (any case), best first: exact, then prefix, then earliest
    match, then shortest; at most ``limit``."""
    text = typed.strip().lower()
    scored = []
    for order, model in enumerate(models):
        lower = model.lower()
        at = lower.find(text)
        if at < 0:
            continue
        scored.append((lower != text, at != 0, at, len(model), order, model))
    scored.sort()
    return [item[-1] for item in scored[:limit]]


class ModelList:
    """ModelsLab's model lists for the keys this bot has, refreshed in the background."""

    def __init__(self, client: ModelsLabClient, *, refresh: float,
                 clock: Any = time.time) -> None:
        self.client = client
        self.refresh = refresh
        self.clock = clock
        self._lists: dict[KeyKind, list[str]] = {}
        self._loras: dict[KeyKind, list[str]] = {}  # records whose category is a LoRA
        self._known: set[str] = set()
        self.loaded_at: float | None = None
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="model-list")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            ok = await self.load()
            wait = self.refresh if ok else min(self.refresh, RETRY_AFTER_FAILURE)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def load(self) -> bool:
        """Read every list this bot has a key for; True when all could be read."""
        problems = []
        for kind in KeyKind:
            if not self.client.has_key(kind):
                continue
            try:
                records = await self.client.list_models(kind)
            except ModelsLabError as exc:
                problems.append(f"{kind} list: {exc}")
                continue
            except Exception as exc:  # never let the refresher die
                log.exception("reading the %s model list failed", kind)
                problems.append(f"{kind} list: {type(exc).__name__}")
                continue
            ids = model_ids(r for r in records if not is_lora(r))
            if not ids:
                problems.append(f"{kind} list: empty")
                continue
            self._lists[kind] = ids
            self._loras[kind] = model_ids(r for r in records if is_lora(r))
        if self._lists:
            self._known = {m.lower() for ids in self._lists.values() for m in ids}
        if problems:
            self.last_error = "; ".join(problems)
            log.warning("ModelsLab's model list could not be read (%s); %s", self.last_error,
                        "keeping the last one" if self._lists else
                        "accepting any well-formed model id until it can")
            return False
        self.last_error = None
        self.loaded_at = self.clock()
        log.info("model lists read: %s", ", ".join(f"{len(v)} {k}"
                                                     for k, v in self._lists.items()))
        return True

    # --- questions ----------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """True once a list has been read: the bot checks model ids against it."""
        return bool(self._lists)

    @property
    def models(self) -> list[str]:
        """Every model on the lists: standard first, then enterprise, each once."""
        seen: dict[str, None] = {}
        for kind in KeyKind:
            for model in self._lists.get(kind, ()):
                seen.setdefault(model, None)
        return list(seen)

    def knows(self, model: str) -> bool:
        return model.strip().lower() in self._known

    def closest(self, model: str, n: int = 3) -> list[str]:
        by_lower = {m.lower(): m for m in self.models}
        found = difflib.get_close_matches(model.strip().lower(), list(by_lower), n=n,
                                          cutoff=0.5)
        return [by_lower[m] for m in found]

    def suggest(self, typed: str, allowed: Iterable[str] | None = None,
                kind: KeyKind | None = None) -> list[str]:
        """What the `model` box offers for ``typed``: filtered, best first, 25 at most;
        with ``kind``, from the list of that key only (when it could be read)."""
        if allowed is not None:
            pool = list(allowed)
        elif kind is not None and self._lists.get(kind):
            pool = self._lists[kind]
        else:
            pool = self.models
        return rank(pool, typed)

    def suggest_loras(self, typed: str) -> list[str]:
        """LoRAs on the lists (records of a LoRA category) containing ``typed``, best first."""
        seen: dict[str, None] = {}
        for kind in (KeyKind.ENTERPRISE, KeyKind.STANDARD):
            for lora in self._loras.get(kind, ()):
                seen.setdefault(lora, None)
        return rank(seen, typed)

    def status(self) -> str:
        """One line for admins."""
        if self.available and self.last_error is None:
            return (f"ModelsLab's model list: {len(self.models)} models "
                    f"(refreshed every {_duration(self.refresh)})")
        if self.available:
            return (f"ModelsLab's model list: the last refresh failed ({self.last_error}); "
                    f"using the {len(self.models)} models read before")
        if self.last_error is None:
            return "ModelsLab's model list: not read yet"
        return (f"ModelsLab's model list could not be read ({self.last_error}), so any "
                f"well-formed model id is accepted")


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"
