"""The store's SQLite-flavoured statements, as PostgreSQL receives them."""

from __future__ import annotations

from bot.db.dialect import Dialect
from bot.jobs.models import JobStatus


def pg(sql, params=(), keys=None):
    t = Dialect(lambda table: (keys or {}).get(table, ())).translate(sql, params)
    return t.sql, t.args(params)


def test_placeholders_are_numbered_and_typed_by_their_values():
    assert pg("SELECT * FROM jobs WHERE track_id = ? AND seq > ? AND eta < ?",
              ("a", 3, 1.5)) == (
        "SELECT * FROM jobs WHERE track_id = $1::text AND seq > $2::bigint "
        "AND eta < $3::double precision", ["a", 3, 1.5])


def test_a_none_becomes_null_and_is_becomes_is_not_distinct_from():
    sql, args = pg("SELECT * FROM q WHERE guild_id IS ? AND user_id = ? AND (? IS NULL OR x = ?)",
                   (None, 5, None, None))
    assert sql == ("SELECT * FROM q WHERE guild_id IS NOT DISTINCT FROM NULL AND "
                   "user_id = $1::bigint AND (NULL IS NULL OR x = NULL)")
    assert args == [5]
    sql, args = pg("SELECT 1 WHERE a IS NOT ?", (7,))
    assert sql == "SELECT 1 WHERE a IS DISTINCT FROM $1::bigint" and args == [7]


def test_named_placeholders_keep_one_number_and_casts_and_literals_are_untouched():
    sql, args = pg("UPDATE jobs SET a = :now, b = '?:x', c = d::text WHERE e <= :now "
                   "AND f = :h", {"now": 2.0, "h": "z"})
    assert sql == ("UPDATE jobs SET a = $1::double precision, b = '?:x', c = d::text "
                   "WHERE e <= $1::double precision AND f = $2::text")
    assert args == [2.0, "z"]


def test_enums_and_booleans_are_sent_as_their_values():
    assert pg("SELECT ? , ?", (JobStatus.QUEUED, True))[1] == ["queued", 1]


def test_insert_or_ignore_and_insert_or_replace():
    assert pg("INSERT OR IGNORE INTO t (a, b) SELECT a, b FROM s RETURNING a")[0] == (
        "INSERT INTO t (a, b) SELECT a, b FROM s ON CONFLICT DO NOTHING RETURNING a")
    sql, _ = pg("INSERT OR REPLACE INTO job_outputs (track_id, idx, data) VALUES (?, ?, ?)",
                ("t", 0, b"x"), keys={"job_outputs": ("track_id", "idx")})
    assert sql == ("INSERT INTO job_outputs (track_id, idx, data) VALUES ($1::text, "
                   "$2::bigint, $3::bytea) ON CONFLICT (track_id, idx) DO UPDATE SET "
                   "data = EXCLUDED.data")


def test_json_extract_and_ddl_types():
    assert pg("SELECT json_extract(payload, '$.model_id') FROM jobs")[0] == (
        "SELECT (payload::jsonb->>'model_id') FROM jobs")
    assert Dialect.ddl("CREATE TABLE x (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER, "
                       "r REAL, b BLOB, note TEXT DEFAULT 'INTEGER')") == (
        "CREATE TABLE x (id BIGSERIAL PRIMARY KEY, n BIGINT, r DOUBLE PRECISION, b BYTEA, "
        "note TEXT DEFAULT 'INTEGER')")
