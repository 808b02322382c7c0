"""Helpers shared by the resilience tests (retries, fallbacks, cache, summarise)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest

from tallygate.engine import RetrySettings
from tests.support.gateway import RunningGateway, http
from tests.support.waiting import eventually

HELLO = [{"role": "user", "content": "Hello"}]


def fast_retries(gw: RunningGateway, waits: list[float] | None = None) -> None:
    """Millisecond back-off (and record each wait) so fault tests stay quick."""

    async def sleep(seconds: float) -> None:
        if waits is not None:
            waits.append(seconds)

    runtime = gw.gateway.runtime
    assert runtime is not None
    runtime.engine.retry = RetrySettings(base_delay=0.001, max_delay=0.004, sleep=sleep)


def retrying_gateway(make_gateway: Callable[..., RunningGateway], plan: str = "pro", *,
                     models: tuple[str, ...] = (), **options: Any) -> tuple[RunningGateway, str]:
    """A gateway (`make_gateway(**options)`) with millisecond back-off, and a key of user
    "u" on `plan` (allowed only `models` when some are named)."""
    gw = make_gateway(**options)
    fast_retries(gw)
    return gw, gw.create_key("u", plan, models=models)


def failing_chat(gw: RunningGateway, key: str, sim: Any, *faults: str) -> int:
    """A chat call that the provider's `faults` make fail with a 500 for the client; how
    many requests reached the provider."""
    before = sim.stats.total
    sim.push_faults(*faults)
    with pytest.raises(openai.InternalServerError):
        client(gw, key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    return sim.stats.total - before


def client(gw: RunningGateway, key: str, feature: str = "chat", **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0,
                         default_headers={"X-Tallygate-Feature": feature, **headers})


def post(gw: RunningGateway, key: str, body: dict[str, Any],
         **headers: str) -> tuple[int, dict[str, str], bytes]:
    hdrs = {"content-type": "application/json", "authorization": f"Bearer {key}", **headers}
    return http("POST", gw.url + "/v1/chat/completions", orjson.dumps(body), hdrs)


def limits(gw: RunningGateway, key: str) -> dict[str, dict[str, Any]]:
    _, _, raw = http("GET", gw.url + "/v1/usage", headers={"Authorization": f"Bearer {key}"})
    return {item["key"]: item for item in orjson.loads(raw)["limits"]}


def nothing_held(gw: RunningGateway, key: str) -> bool:
    return all(item["reserved"] == 0 for item in limits(gw, key).values())


def detail(row: Any) -> dict[str, Any]:
    return orjson.loads(row.detail) if row.detail else {}


def rows_when(gw: RunningGateway, count: int, timeout: float = 5.0) -> list[Any]:
    """The ledger rows once `count` are there (a stream's row lands just after the
    client read its last event)."""
    return eventually(lambda: rows if len(rows := gw.rows()) >= count else None,
                      timeout=timeout)
