"""Multi-row SQLite inserts (ledger/bulk.py): every row lands, in few statements, and an
upsert tail applies to each row."""

from __future__ import annotations

import sqlite3

import pytest

from tallygate.ledger.bulk import CHUNK, insert_rows, statement_sizes


@pytest.mark.parametrize("n", [0, 1, 2, 63, 64, 65, 200, 1000])
def test_sizes_cover_every_row_with_few_statement_shapes(n: int) -> None:
    sizes = statement_sizes(n)
    assert sum(sizes) == n
    assert set(sizes) <= {CHUNK >> k for k in range(7)}  # 64, 32, … 1: cached shapes
    assert len(sizes) <= n // CHUNK + 6


def test_rows_are_inserted_and_upserted() -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    insert_rows(db, "INSERT INTO t (k, v)", 2, [(f"k{i}", i) for i in range(150)])
    inserts = [s for s in statements if s.startswith("INSERT")]
    assert len(inserts) == len(statement_sizes(150))  # not one statement per row
    insert_rows(db, "INSERT INTO t (k, v)", 2, [("k1", 100), ("k149", 7), ("new", 1)],
                " ON CONFLICT (k) DO UPDATE SET v = excluded.v")
    assert db.execute("SELECT count(*), sum(v) FROM t").fetchone() == (
        151, sum(range(150)) - 1 + 100 - 149 + 7 + 1)
    assert db.execute("SELECT v FROM t WHERE k = 'k1'").fetchone() == (100,)
