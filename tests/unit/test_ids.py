"""Call ids drawn from a pool of CSPRNG bytes: unique, well-formed, and never shared
with a forked child (which would otherwise hand out the parent's next ids)."""

from __future__ import annotations

import os
import re

from tallygate.engine import new_call_id


def test_ids_are_unique_and_well_formed_across_pool_refills() -> None:
    ids = [new_call_id() for _ in range(3000)]  # several refills of the pool
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"tg-[0-9a-f]{32}", i) for i in ids)


def test_a_forked_child_draws_its_own_ids() -> None:
    new_call_id()  # the pool now holds ids the parent has not handed out yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then gone
        os.close(read)
        os.write(write, " ".join(new_call_id() for _ in range(5)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {new_call_id() for _ in range(5)}
    assert len(child) == 5
    assert not child & parent
