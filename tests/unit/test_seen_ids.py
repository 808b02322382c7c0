"""The owner's filter of finished request ids: never a false "no", rarely a false "yes"."""

from __future__ import annotations

from tallygate.state.seen_ids import SMALLEST, SeenIds


def test_every_added_id_is_found_across_growth() -> None:
    seen = SeenIds()
    ids = [f"tg-{i:08x}" for i in range(3 * SMALLEST)]  # forces two larger filters
    for rid in ids:
        seen.add(rid)
    assert seen.filter_count == 2  # 65,536 then 131,072 ids
    assert all(rid in seen for rid in ids)


def test_false_positives_stay_near_one_percent() -> None:
    seen = SeenIds(expected=50_000)
    for i in range(50_000):
        seen.add(f"done-{i}")
    fresh = [f"fresh-{i}" for i in range(50_000)]
    rate = sum(rid in seen for rid in fresh) / len(fresh)
    assert rate < 0.02, rate


def test_non_strings_are_never_seen() -> None:
    seen = SeenIds()
    seen.add("x")
    assert 42 not in seen and None not in seen


def test_the_loader_answers_maybe_until_built_and_keeps_what_was_added_meanwhile(
        tmp_path, monkeypatch) -> None:
    import sqlite3
    import threading

    from tallygate.state.seen_ids import SeenIdsLoader
    from tallygate.state.sqlite import connect_state

    path = str(tmp_path / "state.db")
    db = connect_state(path, 1000)
    db.executemany("INSERT INTO state_holds VALUES (?, ?, 0, 1.0, '')",
                   [("done-1", "settled"), ("done-2", "released"), ("live", "held")])
    db.close()
    go, closed = threading.Event(), threading.Event()
    real_connect = sqlite3.connect

    class Watched:
        """The build's connection: its close() says the build is over."""

        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def execute(self, *args):
            return self.db.execute(*args)

        def close(self) -> None:
            self.db.close()
            closed.set()

    def held_back(*args, **kwargs):  # the build waits until the test lets it go
        go.wait(5)
        return Watched(real_connect(*args, **kwargs))

    monkeypatch.setattr("tallygate.state.seen_ids.sqlite3.connect", held_back)
    loader = SeenIdsLoader(path)
    assert loader.maybe("fresh")  # not built yet: everything needs the exact lookup
    loader.add("evicted-while-building", 2.0)
    go.set()
    assert closed.wait(5)
    assert not loader.maybe("fresh")  # built: "no" is exact now
    assert loader.maybe("done-1") and loader.maybe("done-2")
    assert loader.maybe("evicted-while-building")
    assert not loader.maybe("live")  # held reservations are in memory, not here
    loader.add("later", 3.0)
    assert loader.maybe("later")
    loader.close()


def test_filters_older_than_the_retention_are_dropped_whole() -> None:
    """Ids leave SQLite `retention` after they finished: their filter goes then, so
    memory follows what SQLite keeps, not the uptime."""
    seen = SeenIds(slot=10.0)
    for t in range(100):  # one id a second: a new filter every 10 s
        seen.add(f"id-{t}", float(t))
    assert seen.filter_count == 10
    seen.forget_before(95.0)  # ids added before t=95 have left SQLite
    assert seen.filter_count == 1  # the newest filter (t=90..99) stays
    assert "id-99" in seen and "id-90" in seen
    assert "id-5" not in seen and "id-50" not in seen
