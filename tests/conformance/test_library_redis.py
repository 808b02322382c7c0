"""The budget holds across processes: two OS processes using the library and one gateway
process, all sharing one Redis state store, spend one small plan limit concurrently —
the provider-reported tokens of every call that got through sum to at most the limit."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import openai
import pytest

from tallygate.keys import open_keystore
from tests.support.gateway import running_sim
from tests.support.procs import gateways, write_policy

LIMIT = 3_000
CALLS_PER_CLIENT = 30
ROOT = Path(__file__).resolve().parents[2]


def worker(config: str, user: str, calls: int) -> None:
    """Run in a child process: `calls` concurrent governed calls; prints the usages.
    Starts when the test creates the `go` file beside the config, so all three clients
    really spend the limit at the same time."""
    import tallygate

    folder = Path(config).parent

    async def main(gov: tallygate.Governor) -> list[int | None]:
        client = gov.openai(openai.AsyncOpenAI(base_url=sys.argv[1], api_key="sk-sim",
                                               max_retries=0),
                            feature="chat", user=user, plan="team")

        async def one(i: int) -> int | None:
            try:
                reply = await client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"lib {i}"}])
            except tallygate.BudgetExceeded:
                return None
            return reply.usage.total_tokens

        return list(await asyncio.gather(*(one(i) for i in range(calls))))

    with tallygate.Governor.from_config(config) as gov:
        gov.runtime()  # open the stores before saying ready
        (folder / f"ready-{uuid.uuid4().hex}").touch()
        while not (folder / "go").exists():
            time.sleep(0.005)
        result = asyncio.run(main(gov))
    print(json.dumps(result))


@pytest.mark.slow
@pytest.mark.redis
def test_library_processes_and_a_gateway_share_a_plan_limit(redis_url: str,
                                                            tmp_path: Path) -> None:
    user = "shared-" + uuid.uuid4().hex[:8]
    with running_sim() as (sim, _):
        ledger = f"sqlite:///{tmp_path}/ledger.db"
        config = write_policy(tmp_path / "tallygate.yaml", {
            "storage": {"state": redis_url.rsplit("/", 1)[0] + "/5", "ledger": ledger},
            "providers": {"openai": {"protocol": "openai", "base_url": f"{sim.url}/v1",
                                     "api_key": "sk-sim"}},
            "features": {"chat": {"max_output": 60, "model": "gpt-4o-mini"}},
            "plans": {"team": {"tokens_per_day": LIMIT}},
        })
        secret = asyncio.run(_create_key(ledger, user))
        sim.config.reply_tokens = 60  # replies use the whole cap: the limit ends nearly full
        try:
            with gateways(config, 1) as urls:
                procs = [_start_worker(config, user, f"{sim.url}/v1") for _ in range(2)]
                _wait_ready(tmp_path, 2)
                # A few gateway calls first (sure to fit), then all three at once.
                via_gateway = asyncio.run(_hammer(urls[0], secret, 3))
                (tmp_path / "go").touch()
                via_gateway += asyncio.run(_hammer(urls[0], secret, CALLS_PER_CLIENT))
                from_library = [_result(proc) for proc in procs]
        finally:
            sim.config.reply_tokens = 16
    outcomes = via_gateway + [u for result in from_library for u in result]
    ok = [u for u in outcomes if u is not None]
    spent_by = [sum(u or 0 for u in r) for r in (via_gateway, *from_library)]
    # The library processes and the gateway all spent from the same limit.
    assert spent_by[0] > 0 and spent_by[1] + spent_by[2] > 0, spent_by
    assert sum(ok) <= LIMIT, spent_by
    assert len(ok) < len(outcomes)  # the limit was actually reached
    assert sum(ok) >= LIMIT * 0.8  # and not by refusing needlessly


def _start_worker(config: Path, user: str, base_url: str) -> subprocess.Popen[bytes]:
    code = ("import sys; from tests.conformance.test_library_redis import worker; "
            f"worker({str(config)!r}, {user!r}, {CALLS_PER_CLIENT})")
    return subprocess.Popen([sys.executable, "-c", code, base_url], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_ready(folder: Path, count: int) -> None:
    deadline = time.monotonic() + 60
    while len(list(folder.glob("ready-*"))) < count:
        assert time.monotonic() < deadline, "library workers did not start"
        time.sleep(0.02)


def _result(proc: subprocess.Popen[bytes]) -> list[int | None]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


async def _create_key(ledger: str, user: str) -> str:
    store = await open_keystore(ledger)
    try:
        _, secret = await store.create(user, "team")
    finally:
        await store.close()
    return secret


async def _hammer(url: str, secret: str, calls: int) -> list[int | None]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=secret, max_retries=0,
                                default_headers={"X-Tallygate-Feature": "chat"})

    async def one(i: int) -> int | None:
        try:
            reply = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"gw {i}"}])
        except openai.RateLimitError:
            return None
        return reply.usage.total_tokens

    try:
        return list(await asyncio.gather(*(one(i) for i in range(calls))))
    finally:
        await client.close()
