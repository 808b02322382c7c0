"""The owner's filter of finished request ids: never a false "no", rarely a false "yes"."""

from __future__ import annotations

from tallygate.state.seen_ids import SMALLEST, SeenIds


def test_every_added_id_is_found_across_growth() -> None:
    seen = SeenIds()
    ids = [f"tg-{i:08x}" for i in range(3 * SMALLEST)]  # forces two larger filters
    for rid in ids:
        seen.add(rid)
    assert len(seen._filters) == 2  # 65,536 then 131,072 ids
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
