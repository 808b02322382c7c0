"""Call ids drawn from a pool of CSPRNG bytes: unique and well-formed across refills
(the forked-child case is in tests/engine/test_ids_fork.py: it needs a process)."""

from __future__ import annotations

import re

from tallygate.engine import new_call_id


def test_ids_are_unique_and_well_formed_across_pool_refills() -> None:
    ids = [new_call_id() for _ in range(3000)]  # several refills of the pool
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"tg-[0-9a-f]{32}", i) for i in ids)
