"""Run the demo: the simulated provider and the gateway on loopback ports in one event
loop, embedded storage (SQLite state and ledger) in a directory, virtual keys for every
user, and the scripted workload replayed through the official openai and anthropic SDKs.

Nothing leaves 127.0.0.1 and no API key is needed: the providers are the simulator."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import openai
import uvicorn

from tallygate.config import Policy
from tallygate.demo.workload import (
    CHAT_FEATURE,
    WORKFLOW_FEATURE,
    Call,
    Session,
    Workload,
    build_workload,
)
from tallygate.gateway.app import Gateway
from tallygate.sim import SimConfig, SimServer, start_sim
from tallygate.sim.common import reply_text

# The demo routes verification to the medium tier on purpose, as many teams start: the
# what-if then shows what moving it to the small tier would save.
WHAT_IF_STEP = "verification"
TIERS = {"small": "gpt-4o-mini", "medium": "gpt-4o", "large": "gpt-4.1"}
STEP_ROUTES = {"planning": "large", "execution": "medium", "review": "medium",
               "verification": "medium"}
PLANS = {"free": 10_000, "pro": 100_000, "enterprise": 1_000_000}

# Modest pacing keeps the demo CPU-light: 8 tokens per SSE chunk, 8,000 tokens/s.
SIM_CONFIG = SimConfig(latency_ms=60, ttft_ms=40, tokens_per_second=8000, reply_tokens=4000,
                       stream_chunk_tokens=8)

Progress = Callable[[Call, str], None]


@dataclass
class ClientTally:
    """What the SDKs saw: outcome counts per user (ok, rejected, error)."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def add(self, user: str, outcome: str) -> None:
        self.outcomes[(user, outcome)] += 1

    def count(self, outcome: str, user: str | None = None) -> int:
        return sum(n for (u, o), n in self.outcomes.items()
                   if o == outcome and (user is None or u == user))


def demo_policy(sim_url: str, directory: Path, models: Mapping[str, Any] | None = None
                ) -> Policy:
    """The demo's policy: both providers are the simulator, storage is SQLite in `directory`;
    `models`: the `models:` overrides of the user's policy (prices, windows, encodings)."""
    db = directory / "tallygate.db"
    data: dict[str, Any] = {
        "storage": {"state": f"sqlite:///{directory / 'state.db'}", "ledger": f"sqlite:///{db}"},
        "providers": {
            "openai": {"protocol": "openai", "base_url": f"{sim_url}/v1", "api_key": "sk-sim"},
            "anthropic": {"protocol": "anthropic", "base_url": sim_url, "api_key": "sk-sim"},
        },
        "tiers": TIERS,
        "routing": {"steps": STEP_ROUTES},
        "features": {
            CHAT_FEATURE: {"max_input": 4000, "max_output": 1000, "model": "gpt-4o-mini",
                           "on_exceed": "trim"},
            WORKFLOW_FEATURE: {"max_input": 32000, "max_output": 2000, "model": "tier:medium"},
        },
        "plans": {name: {"tokens_per_day": n} for name, n in PLANS.items()},
        "limits": {"global": {"tokens_per_minute": 2_000_000}, "run": {"cost_usd_per_day": 5}},
        "admin_key": "tg-demo-admin",
        "models": dict(models or {}),
    }
    return Policy.from_mapping(data, "<demo>")


def demo_config_yaml(directory: Path, models: Mapping[str, Any] | None = None) -> str:
    """A tallygate.yaml pointing at the demo's storage, so `tallygate report` and
    `tallygate budgets --config` can be run on it afterwards (with the `models:` the demo
    priced with, so `what-if` there agrees)."""
    db = directory / "tallygate.db"
    tiers = ", ".join(f"{k}: {v}" for k, v in TIERS.items())
    steps = ", ".join(f"{k}: {v}" for k, v in STEP_ROUTES.items())
    plans = "\n".join(f"  {k}: {{tokens_per_day: {v}}}" for k, v in PLANS.items())
    return (
        f"# Written by `tallygate demo`: its storage, for `tallygate report|budgets --config`.\n"
        f"storage: {{state: 'sqlite:///{directory / 'state.db'}', ledger: 'sqlite:///{db}'}}\n"
        f"tiers: {{{tiers}}}\nrouting: {{steps: {{{steps}}}}}\n"
        f"features:\n  {CHAT_FEATURE}: {{max_input: 4000, max_output: 1000, "
        f"model: gpt-4o-mini, on_exceed: trim}}\n"
        f"  {WORKFLOW_FEATURE}: {{max_input: 32000, max_output: 2000, model: 'tier:medium'}}\n"
        f"plans:\n{plans}\n"
        "limits: {global: {tokens_per_minute: 2000000}, run: {cost_usd_per_day: 5}}\n"
        + _models_yaml(models)
    )


def _models_yaml(models: Mapping[str, Any] | None) -> str:
    if not models:
        return ""
    import orjson

    # YAML numbers load as Decimal: written back as their exact decimal text.
    plain = orjson.loads(orjson.dumps(models, default=str))
    return "models: " + orjson.dumps(plain).decode() + "\n"  # JSON is YAML


# ---------------------------------------------------------------------- servers


class Servers:
    """The simulator and the gateway, both on free loopback ports in this event loop."""

    def __init__(self, sim: SimServer, gateway: Gateway, server: uvicorn.Server,
                 task: asyncio.Task[None], url: str) -> None:
        self.sim, self.gateway, self.server, self.task, self.url = sim, gateway, server, task, url

    @classmethod
    async def start(cls, directory: Path, models: Mapping[str, Any] | None = None) -> Servers:
        sim = await start_sim(config=SIM_CONFIG)
        gateway = Gateway(demo_policy(sim.url, directory, models))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(gateway, lifespan="on", log_level="warning",
                                access_log=False)
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():  # start-up failed: surface its error
                await sim.close()
                task.result()
                raise RuntimeError("the demo gateway did not start")
            await asyncio.sleep(0.02)
        return cls(sim, gateway, server, task, f"http://127.0.0.1:{port}")

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task
        await self.sim.close()


# ---------------------------------------------------------------------- one call


def _text(call: Call, n_tokens: int) -> str:
    head = f"[{call.run or call.user} {call.step or call.feature} #{call.attempt or 1}] "
    return head + reply_text(call.seed, max(1, n_tokens))


def _headers(call: Call) -> dict[str, str]:
    headers = {"X-Tallygate-Feature": call.feature}
    if call.run is not None:
        headers["X-Tallygate-Run"] = call.run
    if call.step is not None:
        headers["X-Tallygate-Step"] = call.step
    if call.attempt is not None:
        headers["X-Tallygate-Attempt"] = str(call.attempt)
    return headers


async def _openai_call(client: openai.AsyncOpenAI, call: Call,
                       history: list[dict[str, str]]) -> str:
    messages = [{"role": "system", "content": "You are a careful software engineer."},
                *history]
    kwargs: dict[str, Any] = {"model": call.model, "messages": messages,
                              "max_tokens": call.max_tokens, "extra_headers": _headers(call)}
    if call.stream:
        stream = await client.chat.completions.create(stream=True, **kwargs)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        return "".join(parts)
    reply = await client.chat.completions.create(**kwargs)
    return reply.choices[0].message.content or ""


async def _anthropic_call(client: anthropic.AsyncAnthropic, call: Call,
                          history: list[dict[str, str]]) -> str:
    kwargs: dict[str, Any] = {"model": call.model, "messages": history,
                              "system": "You are a friendly assistant.",
                              "max_tokens": call.max_tokens, "extra_headers": _headers(call)}
    if call.stream:
        async with client.messages.stream(**kwargs) as stream:
            return "".join([text async for text in stream.text_stream])
    reply = await client.messages.create(**kwargs)
    return "".join(b.text for b in reply.content if b.type == "text")


_REJECTED = (openai.RateLimitError, anthropic.RateLimitError)
_API_ERRORS = (openai.APIError, anthropic.APIError)


# ---------------------------------------------------------------------- sessions


@dataclass
class Clients:
    openai: openai.AsyncOpenAI
    anthropic: anthropic.AsyncAnthropic

    @classmethod
    def for_key(cls, url: str, secret: str) -> Clients:
        # No SDK retries: a 429 budget_exceeded is the answer, not a hiccup.
        return cls(openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0),
                   anthropic.AsyncAnthropic(base_url=url, api_key=secret, max_retries=0))

    async def close(self) -> None:
        await self.openai.close()
        await self.anthropic.close()


async def run_session(session: Session, clients: Clients, t0: float, seconds: float,
                      tally: ClientTally, progress: Progress) -> None:
    """The session's calls in order, each no earlier than its scripted time."""
    history: list[dict[str, str]] = []
    for call in session.calls:
        delay = t0 + call.at * seconds - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        turn = {"role": "user", "content": _text(call, call.prompt_tokens)}
        messages = [*history, turn] if session.keeps_history else [turn]
        outcome = "ok"
        try:
            if call.protocol == "anthropic":
                reply = await _anthropic_call(clients.anthropic, call, messages)
            else:
                reply = await _openai_call(clients.openai, call, messages)
            if session.keeps_history:
                history = [*messages, {"role": "assistant", "content": reply}]
        except _REJECTED:
            outcome = "rejected"
        except _API_ERRORS as exc:
            outcome = "error"
            tally.errors.append(f"{session.name}: {type(exc).__name__}: {exc}")
        tally.add(session.user, outcome)
        progress(call, outcome)


async def create_keys(gateway: Gateway, workload: Workload) -> dict[str, str]:
    """One virtual key per user (secrets stay in memory; only hashes are stored)."""
    assert gateway.runtime is not None
    secrets: dict[str, str] = {}
    for session in workload.sessions:
        if session.user not in secrets:
            _, secret = await gateway.runtime.keys.create(
                session.user, session.plan, name=f"demo {session.user}")
            secrets[session.user] = secret
    return secrets


async def replay(url: str, secrets: dict[str, str], workload: Workload, seconds: float,
                 progress: Progress) -> ClientTally:
    tally = ClientTally()
    clients = {user: Clients.for_key(url, secret) for user, secret in secrets.items()}
    t0 = time.monotonic()
    try:
        await asyncio.gather(*(
            run_session(s, clients[s.user], t0, seconds, tally, progress)
            for s in workload.sessions
        ))
    finally:
        for c in clients.values():
            await c.close()
    return tally


async def run_workload(directory: Path, seconds: float, progress: Progress,
                       seed: int = 7, models: Mapping[str, Any] | None = None
                       ) -> tuple[ClientTally, Workload, Any]:
    """Start everything, replay the workload, flush the ledger; returns the client tally,
    the workload and the ledger store (open: the caller closes it)."""
    from tallygate.ledger import open_ledger

    workload = build_workload(seed)
    servers = await Servers.start(directory, models)
    try:
        secrets = await create_keys(servers.gateway, workload)
        tally = await replay(servers.url, secrets, workload, seconds, progress)
        assert servers.gateway.runtime is not None
        await servers.gateway.runtime.writer.flush()
        ledger_url = servers.gateway.policy.storage.ledger
    finally:
        await servers.stop()
    return tally, workload, await open_ledger(ledger_url)
