"""Rollups of the calls table, kept by the database itself (migration 3).

The dashboard reads day- and month-long windows of a ledger of millions of rows; summing
the raw rows each time costs a full scan. Two small tables are kept current by an
`AFTER INSERT` trigger on `calls`, in the same transaction as the insert, so they are
exact at every moment (a replayed row that `INSERT OR IGNORE` / `ON CONFLICT DO NOTHING`
skips fires no trigger, so replays are not counted twice):

- `rollup_hour` and `rollup_day`: one row per UTC hour (day) and (feature, model, step,
  plan, outcome, reason) — the low-cardinality names — with the sums of every token and
  money column. `reason` is the error code of refused and failed calls ('' otherwise).
  The daily table serves month-long windows: its size does not grow with the traffic of
  an hour.
- `rollup_ids`: one row per UTC day and (dim, value) for the high-cardinality names
  (dim `user` and `key`), with calls, tokens, cost, refusals, the highest
  X-Tallygate-Attempt seen and the first/last call time; `rollup_ids_hour` the same per
  hour (a day's chart by user).
- `rollup_runs` (migration 4): the same sums per UTC day and run *of its owner* (owner,
  run): a run id belongs to its caller, as its budgets do (`owner_sql`), so alice's and
  bob's run `shared-id` are two rows. Migration 3 kept runs in `rollup_ids` (dim `run`)
  by name alone; migration 4 rebuilds them from `calls` into `rollup_runs`, drops them
  from `rollup_ids` and replaces the trigger.

A missing name is stored as '' (primary-key columns cannot be NULL) and read back as
None. Hours are floor(ts / 3600), days floor(ts / 86400): UTC calendar buckets.

SQLite runs a row trigger (its only kind): seven small upserts per inserted row, inside
the writer's batch transaction. PostgreSQL runs one statement trigger over the statement's
transition table (set-based upserts), after a transaction-scoped advisory lock so two
replicas' batches never take rollup row locks in opposite orders (no deadlocks).
"""

from __future__ import annotations

from typing import Literal

Dialect = Literal["sqlite", "postgres"]

NAME_KEY = ("feature", "model", "step", "plan", "outcome", "reason")
HOUR_KEY = ("hour", *NAME_KEY)
BUCKETS = {"rollup_hour": ("hour", 3600), "rollup_day": ("day", 86400)}
HOUR_SUMS = ("calls", "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens",
             "reasoning_tokens", "cost_nusd", "trimmed_tokens", "tokens_saved", "estimated")
IDS_KEY = ("day", "dim", "value")
IDS_SUMS = ("calls", "input_tokens", "output_tokens", "cost_nusd", "rejected")
IDS_DIMS = {"user": '"user"', "key": "key_id", "run": "run"}
# table → (bucket column, seconds, dims): hourly ids serve a day's chart by user or key
IdsTables = dict[str, tuple[str, int, tuple[str, ...]]]
IDS_TABLES: IdsTables = {"rollup_ids": ("day", 86400, ("user", "key")),
                         "rollup_ids_hour": ("hour", 3600, ("user", "key"))}
# What migration 3 (released) built: runs by name alone in rollup_ids.
_V3_IDS_TABLES: IdsTables = {"rollup_ids": ("day", 86400, ("user", "key", "run")),
                             "rollup_ids_hour": ("hour", 3600, ("user", "key"))}
RUNS_KEY = ("day", "owner", "run")



def owner_sql(p: str = "") -> str:
    """Who a row's run belongs to, as its budgets scope it (core/limits.py `run_owner`), in
    readable form: `user.<user>`, else `key.<key id>`, else `-`. `p` the row prefix."""
    return (f"CASE WHEN {p}\"user\" IS NOT NULL THEN 'user.' || {p}\"user\" "
            f"WHEN {p}key_id IS NOT NULL THEN 'key.' || {p}key_id ELSE '-' END")


_INT = {"sqlite": "INTEGER", "postgres": "BIGINT"}
_REAL = {"sqlite": "REAL", "postgres": "DOUBLE PRECISION"}
_PG_LOCK_ID = 0x7A11_6A7F  # serialises rollup upserts of concurrent ledger batches


def _tables(d: Dialect) -> list[str]:
    i = _INT[d]
    # SQLite: the primary key *is* the table (one B-tree per upsert instead of two).
    clustered = " WITHOUT ROWID" if d == "sqlite" else ""
    name_sums = ", ".join(f"{c} {i} NOT NULL" for c in HOUR_SUMS)
    ids_sums = ", ".join(f"{c} {i} NOT NULL" for c in IDS_SUMS)
    names = [
        f"CREATE TABLE IF NOT EXISTS {table} ({col} {i} NOT NULL, feature TEXT NOT NULL, "
        "model TEXT NOT NULL, step TEXT NOT NULL, plan TEXT NOT NULL, outcome TEXT NOT NULL, "
        f"reason TEXT NOT NULL, {name_sums}, PRIMARY KEY ({col}, {', '.join(NAME_KEY)})"
        f"){clustered}"
        for table, (col, _) in BUCKETS.items()
    ]
    ids = [
        f"CREATE TABLE IF NOT EXISTS {table} ({col} {i} NOT NULL, dim TEXT NOT NULL, "
        f"value TEXT NOT NULL, {ids_sums}, max_attempt {i}, first_ts {_REAL[d]} NOT NULL, "
        f"last_ts {_REAL[d]} NOT NULL, PRIMARY KEY ({col}, dim, value)){clustered}"
        for table, (col, _, _) in IDS_TABLES.items()
    ]
    return [*names, *ids]


def _runs_table(d: Dialect) -> str:
    i = _INT[d]
    sums = ", ".join(f"{c} {i} NOT NULL" for c in IDS_SUMS)
    clustered = " WITHOUT ROWID" if d == "sqlite" else ""
    return (f"CREATE TABLE IF NOT EXISTS rollup_runs (day {i} NOT NULL, owner TEXT NOT NULL, "
            f"run TEXT NOT NULL, {sums}, max_attempt {i}, first_ts {_REAL[d]} NOT NULL, "
            f"last_ts {_REAL[d]} NOT NULL, PRIMARY KEY ({', '.join(RUNS_KEY)})){clustered}")


def _floor(d: Dialect, expr: str, width: int) -> str:
    if d == "sqlite":
        return f"CAST({expr} / {width} AS INTEGER)"
    return f"floor({expr} / {width})::bigint"


def _hour_values(d: Dialect, p: str, width: int = 3600) -> list[str]:
    """The rollup_hour (rollup_day) key of a calls row, `p` the row prefix ("NEW." or "")."""
    return [
        _floor(d, f"{p}ts", width), f"COALESCE({p}feature, '')",
        f"COALESCE({p}model_used, {p}model_requested, '')", f"COALESCE({p}step, '')",
        f"COALESCE({p}plan, '')", f"{p}outcome",
        f"CASE WHEN {p}outcome IN ('rejected', 'error') THEN COALESCE({p}error_code, '') "
        "ELSE '' END",
    ]


def _hour_sums(p: str, agg: bool) -> list[str]:
    cols = [f"{p}input_tokens", f"{p}output_tokens", f"{p}cached_tokens",
            f"{p}cache_write_tokens", f"{p}reasoning_tokens", f"{p}cost_nusd",
            f"{p}trimmed_tokens", f"{p}tokens_saved",
            f"CASE WHEN {p}exact THEN 0 ELSE 1 END"]
    if agg:
        return ["COUNT(*)", *(f"SUM({c})" for c in cols)]
    return ["1", *cols]


def _day_sums(p: str, agg: bool) -> list[str]:
    rejected = f"CASE WHEN {p}outcome = 'rejected' THEN 1 ELSE 0 END"
    cols = [f"{p}input_tokens", f"{p}output_tokens", f"{p}cost_nusd", rejected]
    if agg:
        return ["COUNT(*)", *(f"SUM({c})" for c in cols), f"MAX({p}step_attempt)",
                f"MIN({p}ts)", f"MAX({p}ts)"]
    return ["1", *cols, f"{p}step_attempt", f"{p}ts", f"{p}ts"]


def _on_conflict(table: str, key: tuple[str, ...], sums: tuple[str, ...],
                 extra: bool) -> str:
    sets = [f"{c} = {table}.{c} + excluded.{c}" for c in sums]
    if extra:  # NULL-safe max of attempts, min/max of times
        sets += [
            f"max_attempt = CASE WHEN {table}.max_attempt IS NULL THEN excluded.max_attempt "
            f"WHEN excluded.max_attempt IS NULL THEN {table}.max_attempt "
            f"WHEN excluded.max_attempt > {table}.max_attempt THEN excluded.max_attempt "
            f"ELSE {table}.max_attempt END",
            f"first_ts = CASE WHEN excluded.first_ts < {table}.first_ts THEN excluded.first_ts "
            f"ELSE {table}.first_ts END",
            f"last_ts = CASE WHEN excluded.last_ts > {table}.last_ts THEN excluded.last_ts "
            f"ELSE {table}.last_ts END",
        ]
    return f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {', '.join(sets)}"


def _name_cols(table: str) -> str:
    return f"{table} ({', '.join((BUCKETS[table][0], *NAME_KEY, *HOUR_SUMS))})"


def _name_key(table: str) -> tuple[str, ...]:
    return (BUCKETS[table][0], *NAME_KEY)


def _ids_cols(table: str) -> str:
    col = IDS_TABLES[table][0]
    names = ", ".join((col, "dim", "value", *IDS_SUMS, "max_attempt", "first_ts", "last_ts"))
    return f"{table} ({names})"


def _ids_key(table: str) -> tuple[str, ...]:
    return (IDS_TABLES[table][0], "dim", "value")


_RUNS_COLS = "rollup_runs ({})".format(
    ", ".join((*RUNS_KEY, *IDS_SUMS, "max_attempt", "first_ts", "last_ts")))


def _runs_upsert(d: Dialect) -> str:
    """The rollup_runs upsert of one inserted row (NEW); calls without a run are skipped."""
    values = [_floor(d, "NEW.ts", 86400), owner_sql("NEW."), "NEW.run", *_day_sums("NEW.", False)]
    return (f"INSERT INTO {_RUNS_COLS} SELECT {', '.join(values)} WHERE NEW.run IS NOT NULL "
            f"{_on_conflict('rollup_runs', RUNS_KEY, IDS_SUMS, True)};")


def _runs_select(d: Dialect, source: str) -> str:
    values = [_floor(d, "ts", 86400), owner_sql(), "run", *_day_sums("", True)]
    return (f"SELECT {', '.join(values)} FROM {source} WHERE run IS NOT NULL "
            "GROUP BY 1, 2, 3")


def _row_upserts(d: Dialect, ids_tables: IdsTables, runs: bool) -> str:
    """The upserts of one inserted row (NEW), for a row trigger's body."""
    names = [
        f"INSERT INTO {_name_cols(t)} VALUES "
        f"({', '.join([*_hour_values(d, 'NEW.', w), *_hour_sums('NEW.', False)])}) "
        f"{_on_conflict(t, _name_key(t), HOUR_SUMS, False)};"
        for t, (_, w) in BUCKETS.items()]
    days = [_runs_upsert(d)] if runs else []
    for table, (_, width, dims) in ids_tables.items():
        for dim in dims:
            col = IDS_DIMS[dim]
            values = [_floor(d, "NEW.ts", width), f"'{dim}'", f"COALESCE(NEW.{col}, '')",
                      *_day_sums("NEW.", False)]
            # VALUES where it can (cheaper); a SELECT … WHERE skips calls without a run.
            head = (f"SELECT {', '.join(values)} WHERE NEW.{col} IS NOT NULL" if dim == "run"
                    else f"VALUES ({', '.join(values)})")
            days.append(f"INSERT INTO {_ids_cols(table)} {head} "
                        f"{_on_conflict(table, _ids_key(table), IDS_SUMS, True)};")
    return "\n  ".join([*names, *days])


def _sqlite_trigger(ids_tables: IdsTables, runs: bool) -> str:
    return ("CREATE TRIGGER IF NOT EXISTS calls_rollups AFTER INSERT ON calls BEGIN\n  "
            f"{_row_upserts('sqlite', ids_tables, runs)}\nEND")


def _hour_select(d: Dialect, source: str, width: int = 3600) -> str:
    keys = _hour_values(d, "", width)
    group = ", ".join(str(i) for i in range(1, len(keys) + 1))
    return (f"SELECT {', '.join([*keys, *_hour_sums('', True)])} FROM {source} "
            f"WHERE 1=1 GROUP BY {group}")


def _day_select(d: Dialect, source: str, table: str, ids_tables: IdsTables) -> str:
    parts = []
    _, width, dims = ids_tables[table]
    for dim in dims:
        col = IDS_DIMS[dim]
        values = [_floor(d, "ts", width), f"'{dim}'", f"COALESCE({col}, '')",
                  *_day_sums("", True)]
        only = f" WHERE {col} IS NOT NULL" if dim == "run" else ""
        parts.append(f"SELECT {', '.join(values)} FROM {source}{only} GROUP BY 1, 3")
    return " UNION ALL ".join(parts)


def _pg_trigger(ids_tables: IdsTables, runs: bool) -> list[str]:
    names = "\n  ".join(
        f"INSERT INTO {_name_cols(t)} {_hour_select('postgres', 'fresh', w)} "
        f"ORDER BY 1, 2, 3, 4, 5, 6, 7 {_on_conflict(t, _name_key(t), HOUR_SUMS, False)};"
        for t, (_, w) in BUCKETS.items())
    upserts = [
        f"INSERT INTO {_ids_cols(t)} SELECT * FROM "
        f"({_day_select('postgres', 'fresh', t, ids_tables)}) AS d"
        f" ORDER BY 1, 2, 3 {_on_conflict(t, _ids_key(t), IDS_SUMS, True)};"
        for t in ids_tables]
    if runs:
        upserts.append(
            f"INSERT INTO {_RUNS_COLS} SELECT * FROM ({_runs_select('postgres', 'fresh')}) AS r"
            f" ORDER BY 1, 2, 3 {_on_conflict('rollup_runs', RUNS_KEY, IDS_SUMS, True)};")
    day = "\n  ".join(upserts)
    return [
        "CREATE OR REPLACE FUNCTION calls_rollups() RETURNS trigger LANGUAGE plpgsql AS $fn$\n"
        f"BEGIN\n  PERFORM pg_advisory_xact_lock({_PG_LOCK_ID});\n  {names}\n  {day}\n"
        "  RETURN NULL;\nEND\n$fn$",
        "DROP TRIGGER IF EXISTS calls_rollups ON calls",
        "CREATE TRIGGER calls_rollups AFTER INSERT ON calls REFERENCING NEW TABLE AS fresh "
        "FOR EACH STATEMENT EXECUTE FUNCTION calls_rollups()",
    ]


def statements(d: Dialect) -> list[str]:
    """Migration 3 (released: its statements never change): the tables, a backfill from the
    rows already stored, the trigger. On PostgreSQL `calls` is locked against inserts
    meanwhile (a row committed between the backfill and the trigger would be missed)."""
    lock = ["LOCK TABLE calls IN SHARE MODE"] if d == "postgres" else []
    backfill = [*(f"INSERT INTO {_name_cols(t)} {_hour_select(d, 'calls', w)}"
                  for t, (_, w) in BUCKETS.items()),
                *(f"INSERT INTO {_ids_cols(t)} {_day_select(d, 'calls', t, _V3_IDS_TABLES)}"
                  for t in _V3_IDS_TABLES)]
    trigger = ([_sqlite_trigger(_V3_IDS_TABLES, False)] if d == "sqlite"
               else _pg_trigger(_V3_IDS_TABLES, False))
    return [*lock, *_tables(d), *backfill, *trigger]


def owned_runs_statements(d: Dialect) -> list[str]:
    """Migration 4: runs per owner. rollup_runs built from every stored call (the ledger
    keeps them all, so the rebuild is exact for old rows too), the owner-less `run` rows
    of rollup_ids dropped, and the trigger replaced by one that keeps rollup_runs."""
    if d == "sqlite":
        trigger = ["DROP TRIGGER IF EXISTS calls_rollups", _sqlite_trigger(IDS_TABLES, True)]
    else:
        trigger = _pg_trigger(IDS_TABLES, True)
    lock = ["LOCK TABLE calls IN SHARE MODE"] if d == "postgres" else []
    return [*lock, _runs_table(d), f"INSERT INTO {_RUNS_COLS} {_runs_select(d, 'calls')}",
            "DELETE FROM rollup_ids WHERE dim = 'run'", *trigger]
