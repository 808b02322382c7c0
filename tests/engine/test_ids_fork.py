"""A forked child never hands out its parent's next call ids (the pool of CSPRNG bytes
is drawn again after a fork)."""

from __future__ import annotations

import os

from tallygate.engine import new_call_id


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
