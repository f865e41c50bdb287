"""The store's SQL is written once, in SQLite's flavour; this turns a statement into
PostgreSQL's, once per statement and shape of its parameters (cached).

What is translated: ``?`` and ``:name`` placeholders to ``$n`` (each with a cast named by the
Python type of its value, so PostgreSQL never has to guess; a ``None`` becomes a literal
``NULL``), ``IS ?``/``IS NOT ?`` to ``IS [NOT] DISTINCT FROM``, ``INSERT OR IGNORE`` to
``ON CONFLICT DO NOTHING``, ``INSERT OR REPLACE`` to an upsert on the table's primary key,
``json_extract(x, '$.k')`` to ``(x::jsonb->>'k')``, and in DDL ``INTEGER`` to ``BIGINT``
(Discord ids are 64-bit), ``REAL`` to ``DOUBLE PRECISION``, ``BLOB`` to ``BYTEA`` and
``INTEGER PRIMARY KEY AUTOINCREMENT`` to ``BIGSERIAL PRIMARY KEY``. ``PRAGMA`` statements
mean nothing there and are skipped.

A statement that needs a hand-written PostgreSQL form is listed in ``OVERRIDES`` (keyed by
its SQLite text with whitespace collapsed), so the difference lives in one place.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The store's claim (``JobStore.claim_next``), as its SQLite text reads (whitespace collapsed).
CLAIM_NEXT = (
    "SELECT j.track_id, j.seq, COALESCE(j.guild_id, 0) AS guild_key, j.user_id, j.not_before, "
    "COALESCE(g.last_turn, 0) AS guild_turn, COALESCE(m.last_turn, 0) AS member_turn FROM "
    "jobs j LEFT JOIN served_guilds g ON g.guild_key = COALESCE(j.guild_id, 0) LEFT JOIN "
    "served_members m ON m.guild_key = COALESCE(j.guild_id, 0) AND m.user_id = j.user_id "
    "WHERE j.status = 'queued' ORDER BY j.seq"
)

# SQLite statement (whitespace collapsed) -> the PostgreSQL statement to run instead, still
# written with ``?``/``:name`` placeholders (they are translated like any other). A test
# (tests/bot/jobs/test_store.py) checks that each one still matches the store's statement.
OVERRIDES: dict[str, str] = {
    # The fair claim reads the waiting jobs with their rows locked; a row another
    # transaction holds is passed over rather than waited for.
    CLAIM_NEXT: CLAIM_NEXT + " FOR UPDATE OF j SKIP LOCKED",
}

_TOKEN = re.compile(
    r"""
    (?P<string>'(?:[^']|'')*')           # a string literal, left untouched
    | (?P<ident>"(?:[^"]|"")*")           # a quoted identifier
    | (?P<cast>::)                        # a cast, not a named placeholder
    | (?P<named>:[A-Za-z_][A-Za-z0-9_]*)  # :name
    | (?P<qmark>\?)                       # ?
    | (?P<other>[^'":?]+|.)
    """,
    re.VERBOSE | re.DOTALL,
)
_SPACE = re.compile(r"\s+")
_IS_PARAM = re.compile(r"\bIS\s+(NOT\s+)?(?=\x00)", re.IGNORECASE)
_JSON_EXTRACT = re.compile(
    r"json_extract\(\s*([A-Za-z_][A-Za-z0-9_.]*)\s*,\s*'\$\.([A-Za-z0-9_]+)'\s*\)",
    re.IGNORECASE)
_INSERT_OR = re.compile(r"^\s*INSERT\s+OR\s+(IGNORE|REPLACE)\s+INTO\s+", re.IGNORECASE)
_RETURNING = re.compile(r"\bRETURNING\b", re.IGNORECASE)
_INSERT_TARGET = re.compile(r"^\s*INSERT\s+INTO\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(([^)]*)\)",
                            re.IGNORECASE)
_DDL = re.compile(r"^\s*(CREATE|ALTER|DROP)\b", re.IGNORECASE)
_DDL_TYPES = (
    (re.compile(r"\bINTEGER\s+PRIMARY\s+KEY\s+AUTOINCREMENT\b", re.IGNORECASE),
     "BIGSERIAL PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b", re.IGNORECASE), "BIGINT"),
    (re.compile(r"\bREAL\b", re.IGNORECASE), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b", re.IGNORECASE), "BYTEA"),
)
_PRAGMA = re.compile(r"^\s*PRAGMA\b", re.IGNORECASE)
_WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE|CREATE|ALTER|DROP)\b", re.IGNORECASE)
_WITH_WRITE = re.compile(r"\b(INSERT|UPDATE|DELETE)\b", re.IGNORECASE)


def collapse(sql: str) -> str:
    return _SPACE.sub(" ", sql).strip()


def is_pragma(sql: str) -> bool:
    return bool(_PRAGMA.match(sql))


def is_write(sql: str) -> bool:
    """Whether a statement changes anything (a WITH ... may end in one)."""
    if _WRITE.match(sql):
        return True
    return sql.lstrip()[:4].upper() == "WITH" and bool(_WITH_WRITE.search(sql))


def _kind(value: Any) -> str:
    """The parameter's PostgreSQL type, from its Python value ("" for None: a literal NULL)."""
    if value is None:
        return ""
    if isinstance(value, bool | int):
        return "bigint"
    if isinstance(value, float):
        return "double precision"
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytea"
    return "text"


def plain(value: Any) -> Any:
    """The value as asyncpg should send it."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value


@dataclass(frozen=True, slots=True)
class Translated:
    sql: str
    # For each $n in order: the index (or name) of the parameter it takes.
    order: tuple[int | str, ...]

    def args(self, params: Sequence[Any] | Mapping[str, Any]) -> list[Any]:
        if isinstance(params, Mapping):
            return [plain(params[key]) for key in self.order]
        return [plain(params[key]) for key in self.order]  # type: ignore[index]


class Dialect:
    """Translates SQLite statements for PostgreSQL. ``primary_keys`` names each table's
    primary key columns (for ``INSERT OR REPLACE``); it is read from the database."""

    def __init__(self, primary_keys: Callable[[str], Sequence[str]] | None = None) -> None:
        self._cache: dict[tuple[str, tuple[Any, ...]], Translated] = {}
        self._primary_keys = primary_keys or (lambda table: ())

    def forget(self) -> None:
        self._cache.clear()

    def translate(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Translated:
        if isinstance(params, Mapping):
            shape: tuple[Any, ...] = tuple(sorted((k, _kind(v)) for k, v in params.items()))
        else:
            shape = tuple(_kind(v) for v in params)
        key = (sql, shape)
        found = self._cache.get(key)
        if found is None:
            found = self._translate(sql, params)
            self._cache[key] = found
        return found

    def _translate(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> Translated:
        text = OVERRIDES.get(collapse(sql), sql)
        if _DDL.match(text):
            return Translated(self.ddl(text), ())
        # Placeholders become \x00 marks first, so that the rewrites below can see them.
        pieces: list[str] = []
        marks: list[int | str] = []
        position = 0
        for match in _TOKEN.finditer(text):
            if match.lastgroup == "qmark":
                marks.append(position)
                position += 1
                pieces.append("\x00")
            elif match.lastgroup == "named":
                marks.append(match.group()[1:])
                pieces.append("\x00")
            else:
                pieces.append(match.group())
        text = "".join(pieces)
        text = _IS_PARAM.sub(lambda m: "IS DISTINCT FROM " if m.group(1)
                             else "IS NOT DISTINCT FROM ", text)
        text = _JSON_EXTRACT.sub(lambda m: f"({m.group(1)}::jsonb->>'{m.group(2)}')", text)
        text = self._insert_or(text)
        # Now the marks: each becomes $n with a cast, or NULL; one name keeps one number.
        order: list[int | str] = []
        numbers: dict[int | str, int] = {}
        out: list[str] = []
        chunks = text.split("\x00")
        for index, chunk in enumerate(chunks[:-1]):
            out.append(chunk)
            mark = marks[index]
            value = params[mark]  # type: ignore[index]
            kind = _kind(value)
            if not kind:
                out.append("NULL")
                continue
            if mark not in numbers:
                order.append(mark)
                numbers[mark] = len(order)
            out.append(f"${numbers[mark]}::{kind}")
        out.append(chunks[-1])
        return Translated("".join(out), tuple(order))

    def _insert_or(self, text: str) -> str:
        match = _INSERT_OR.match(text)
        if not match:
            return text
        mode = match.group(1).upper()
        text = "INSERT INTO " + text[match.end():]
        returning = _RETURNING.search(text)
        head, tail = (text[:returning.start()], " " + text[returning.start():]) if returning \
            else (text, "")
        head = head.rstrip().rstrip(";")
        if mode == "IGNORE":
            return f"{head} ON CONFLICT DO NOTHING{tail}"
        target = _INSERT_TARGET.match(text)
        if not target:
            raise ValueError(f"INSERT OR REPLACE needs a column list: {text!r}")
        table = target.group(1)
        columns = [c.strip() for c in target.group(2).split(",")]
        keys = list(self._primary_keys(table))
        if not keys:
            raise ValueError(f"INSERT OR REPLACE into {table}, which has no primary key")
        rest = [c for c in columns if c not in keys]
        action = ("DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in rest)) if rest \
            else "DO NOTHING"
        return f"{head} ON CONFLICT ({', '.join(keys)}) {action}{tail}"

    @staticmethod
    def ddl(sql: str) -> str:
        pieces = []
        for match in _TOKEN.finditer(sql):
            chunk = match.group()
            if match.lastgroup == "other":
                for pattern, replacement in _DDL_TYPES:
                    chunk = pattern.sub(replacement, chunk)
            pieces.append(chunk)
        return "".join(pieces)
