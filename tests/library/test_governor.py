"""Library mode with the official SDK clients (sync and async, OpenAI and Anthropic)
pointed at the simulated provider through `Governor`: the gateway's enforcement,
in-process — rejections before any HTTP call, trimming, output clamping, streaming
settlement (read to the end or closed early), SDK errors releasing the reservation,
attribution, and ledger rows shaped like the gateway's."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

import tallygate
from tallygate.engine import RetrySettings
from tallygate.library import Governor
from tallygate.sim import SimServer
from tallygate.types import CallRecord, Outcome, Window
from tests.support.gateway import RunningGateway, sim_policy
from tests.support.policies import FEATURES, PLANS
from tests.support.waiting import eventually

HI = [{"role": "user", "content": "Hello!"}]
TINY_PLAN = {"tiny": {"tokens_per_day": 150}}


@pytest.fixture
def make_gov(sim: SimServer, tmp_path: Path) -> Iterator[Callable[..., Governor]]:
    govs: list[Governor] = []

    def make(**sections: Any) -> Governor:
        merged = {"features": FEATURES, "plans": {**PLANS, **TINY_PLAN}, **sections}
        sim.clear_faults()
        sim.stats.reset()
        folder = tmp_path / f"gov{len(govs)}"
        folder.mkdir()
        gov = Governor(sim_policy(sim.url, str(folder), **merged))
        govs.append(gov)
        return gov

    yield make
    for gov in govs:
        gov.close()


@pytest.fixture
def gov(make_gov: Callable[..., Governor]) -> Governor:
    return make_gov()


def _oa(sim: SimServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-sim", max_retries=0)


def _aoa(sim: SimServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="sk-sim", max_retries=0)


def _an(sim: SimServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key="sk-sim", max_retries=0)


def _aan(sim: SimServer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=sim.url, api_key="sk-sim", max_retries=0)


def rows(gov: Governor) -> list[CallRecord]:
    gov.flush()
    return list(gov.submit(gov.runtime().ledger.records()).result())


def user_day(gov: Governor, user: str, limit: int) -> Any:
    store = gov.runtime().store
    return gov.submit(store.usage(f"user:{user}:tokens:day", limit=limit, window=Window.DAY,
                                  now=time.time())).result()


# ----------------------------------------------------------------- enforcement


def test_budget_exhausted_raises_before_any_http_call(gov: Governor, sim: SimServer) -> None:
    client = gov.openai(_oa(sim), feature="chat", user="ann", plan="tiny")
    spent = 0
    for _ in range(2):  # each holds input + the 100-token output cap, then settles
        spent += client.chat.completions.create(model="gpt-4o-mini", messages=HI).usage.total_tokens
    calls = sim.stats.total
    with pytest.raises(tallygate.BudgetExceeded) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert sim.stats.total == calls  # refused in-process: the provider never saw it
    exc = info.value
    assert isinstance(exc, tallygate.TallygateError)
    assert (exc.limit, exc.used, exc.remaining) == (150, spent, 150 - spent)
    assert exc.retry_after is not None and 0 < exc.retry_after <= 86_400
    assert exc.status == 429 and exc.code == "budget_exceeded"
    rejected = [r for r in rows(gov) if r.outcome == Outcome.REJECTED]
    assert len(rejected) == 1 and rejected[0].error_code == "budget_exceeded"
    assert user_day(gov, "ann", 150).reserved == 0


def test_input_budget_and_disabled_feature(make_gov: Callable[..., Governor],
                                           sim: SimServer) -> None:
    gov = make_gov(flags={"summarize": True, "chat": False})
    long = [{"role": "user", "content": "word " * 200}]
    with pytest.raises(tallygate.InputBudgetExceeded) as info:
        gov.openai(_oa(sim), feature="summarize").chat.completions.create(
            model="gpt-4o-mini", messages=long)
    assert info.value.limit == 50 and info.value.requested > 50
    assert info.value.status == 400 and isinstance(info.value, tallygate.TallygateError)
    with pytest.raises(tallygate.FeatureDisabled) as off:
        gov.anthropic(_an(sim), feature="chat").messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=HI)
    assert off.value.status == 403 and off.value.code == "feature_disabled"
    assert sim.stats.total == 0


def test_trimming_sends_fewer_messages(gov: Governor, sim: SimServer) -> None:
    history: list[dict[str, str]] = [{"role": "system", "content": "Be brief."}]
    for i in range(50):
        history.append({"role": "user", "content": f"question {i} " + "lorem " * 40})
        history.append({"role": "assistant", "content": f"answer {i} " + "ipsum " * 40})
    history.append({"role": "user", "content": "And now?"})
    before = tallygate.count_tokens(history, model="gpt-4o-mini")
    assert before > 4000  # over the chat feature's max_input (on_exceed: trim)
    client = gov.openai(_oa(sim), feature="chat", user="tim")
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=history)
    sent = sim.stats.last_body("chat/completions")["messages"]
    assert len(sent) < len(history)
    assert sent[0] == history[0] and sent[-1] == history[-1]
    assert reply.usage.prompt_tokens <= 4000
    [row] = rows(gov)
    assert row.outcome == Outcome.TRIMMED and row.trimmed_tokens > 0


def test_output_is_clamped_to_the_feature(gov: Governor, sim: SimServer) -> None:
    gov.openai(_oa(sim), feature="chat").chat.completions.create(
        model="gpt-4o-mini", messages=HI, max_tokens=5000)
    assert sim.stats.last_body("chat/completions")["max_tokens"] == 100
    gov.anthropic(_an(sim), feature="claude").messages.create(
        model="claude-haiku-4-5", max_tokens=5000, messages=HI)
    assert sim.stats.last_body("messages")["max_tokens"] == 100
    assert all(orjson.loads(r.detail)["clamp"]["to"] == 100 for r in rows(gov))


# ----------------------------------------------------------------- streams


def test_openai_stream_consumed_settles_reported_usage(gov: Governor, sim: SimServer) -> None:
    client = gov.openai(_oa(sim), feature="chat", user="sam", plan="free")
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True))
    assert all(c.usage is None for c in chunks)  # the usage chunk the caller did not ask for
    assert sim.stats.last_body("chat/completions")["stream_options"] == {"include_usage": True}
    asked = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=HI, stream=True, stream_options={"include_usage": True}))
    usage = asked[-1].usage
    assert usage is not None and asked[-1].choices == []
    first, second = rows(gov)
    for row in (first, second):
        assert row.stream and row.exact and row.outcome == Outcome.OK and row.ttft_ms is not None
        assert (row.input_tokens, row.output_tokens) == (usage.prompt_tokens,
                                                         usage.completion_tokens)
    assert user_day(gov, "sam", 2000).used == 2 * usage.total_tokens


def test_stream_closed_early_settles_tokens_so_far(gov: Governor, sim: SimServer) -> None:
    client = gov.openai(_oa(sim), feature="chat", user="eve", plan="free")
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)
    got = [next(stream), next(stream)]
    stream.close()
    text = "".join(c.choices[0].delta.content or "" for c in got)
    [row] = rows(gov)
    assert row.outcome == Outcome.ERROR and row.status == 499
    assert row.error_code == "client_disconnected"
    assert row.output_tokens == tallygate.count_tokens(text, model="gpt-4o-mini") > 0
    used = user_day(gov, "eve", 2000)
    assert used.reserved == 0 and used.used == row.input_tokens + row.output_tokens


def test_anthropic_stream_helper_and_raw_stream(gov: Governor, sim: SimServer) -> None:
    client = gov.anthropic(_an(sim), feature="claude", user="ada", plan="free")
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=50, messages=HI) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text and final.usage.output_tokens > 0
    raw = client.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=HI,
                                 stream=True)
    with raw:
        kinds = [event.type for event in raw]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=50, messages=HI) as s:
        next(iter(s.text_stream))  # leave the block after the first text
    full, raw_row, cut = rows(gov)
    assert (full.input_tokens, full.output_tokens) == (final.usage.input_tokens,
                                                       final.usage.output_tokens)
    assert full.exact and raw_row.exact and full.stream
    assert cut.status == 499 and 0 < cut.output_tokens < full.output_tokens
    assert user_day(gov, "ada", 2000).reserved == 0


async def test_async_clients_stream_and_plain(gov: Governor, sim: SimServer) -> None:
    oa = gov.openai(_aoa(sim), feature="chat", user="zed", plan="free")
    reply = await oa.chat.completions.create(model="gpt-4o-mini", messages=HI)
    stream = await oa.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)
    chunks = [c async for c in stream]
    an = gov.anthropic(_aan(sim), feature="claude", user="zed", plan="free")
    message = await an.messages.create(model="claude-haiku-4-5", max_tokens=30, messages=HI)
    async with an.messages.stream(model="claude-haiku-4-5", max_tokens=30, messages=HI) as s:
        final = await s.get_final_message()
    early = await an.messages.create(model="claude-haiku-4-5", max_tokens=30, messages=HI,
                                     stream=True)
    await early.__anext__()
    await early.close()
    assert chunks and all(c.usage is None for c in chunks)
    got = rows(gov)
    assert [r.output_tokens for r in got[:4]] == [
        reply.usage.completion_tokens, reply.usage.completion_tokens,
        message.usage.output_tokens, final.usage.output_tokens]
    assert got[4].status == 499 and got[4].input_tokens == message.usage.input_tokens
    assert user_day(gov, "zed", 2000).reserved == 0


async def test_async_budget_error_and_embeddings(gov: Governor, sim: SimServer) -> None:
    client = gov.openai(_aoa(sim), feature="chat", user="amy", plan="tiny")
    emb = await client.embeddings.create(model="text-embedding-3-small", input="hello there")
    assert emb.usage.prompt_tokens > 0
    await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    calls = sim.stats.total
    with pytest.raises(tallygate.BudgetExceeded):
        await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert sim.stats.total == calls


# ----------------------------------------------------------------- errors, attribution


def test_sdk_error_releases_the_reservation(gov: Governor, sim: SimServer) -> None:
    # The SDKs here do not retry (max_retries=0), so the engine does, as on the gateway:
    # the feature's 2 retries, then the SDK's own exception reaches the caller.
    gov.engine().retry = RetrySettings(base_delay=0.001, max_delay=0.002)
    client = gov.openai(_oa(sim), feature="chat", user="bob", plan="free")
    sim.push_faults("500", "500", "500")
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    sim.push_faults("429:0", "429:0", "429:0")
    with pytest.raises(anthropic.RateLimitError):
        gov.anthropic(_an(sim), feature="claude", user="bob", plan="free").messages.create(
            model="claude-haiku-4-5", max_tokens=20, messages=HI)
    first, second = rows(gov)
    assert (first.outcome, first.status, second.status) == (Outcome.ERROR, 500, 429)
    assert first.error_code and second.error_code
    assert (first.retries, second.retries) == (2, 2)
    usage = user_day(gov, "bob", 2000)
    assert usage.used == 0 and usage.reserved == 0  # no tokens produced, nothing consumed


def test_run_and_step_attribution(gov: Governor, sim: SimServer) -> None:
    client = gov.openai(_oa(sim), feature="chat", user="cy")
    pinned = gov.openai(_oa(sim), feature="chat", user="cy", step="verification")

    def call() -> None:
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)

    with gov.run("TICKET-42"), gov.step("review", attempt=2):
        call()
        ctx = contextvars.copy_context()
        worker = threading.Thread(target=ctx.run, args=(call,))
        worker.start()
        worker.join()
        pinned.chat.completions.create(model="gpt-4o-mini", messages=HI)

        async def in_task() -> None:
            await asyncio.get_running_loop().run_in_executor(None, ctx.run, call)

        asyncio.run(in_task())
    call()  # outside the blocks: no run, no step
    got = rows(gov)
    labels = [(r.run, r.step, r.step_attempt) for r in got]
    assert labels == [("TICKET-42", "review", 2)] * 2 + [
        ("TICKET-42", "verification", None), ("TICKET-42", "review", 2), (None, None, None)]


def test_wrapper_keeps_the_rest_of_the_client(gov: Governor, sim: SimServer) -> None:
    raw = _oa(sim)
    client = gov.openai(raw, feature="chat")
    assert client.base_url == raw.base_url and client.wrapped is raw
    assert [m.id for m in client.models.list()]  # not governed, delegated unchanged
    with pytest.raises(tallygate.InvalidRequest):
        gov.openai(_an(sim))


def test_a_mistyped_label_is_refused_with_a_suggestion(gov: Governor, sim: SimServer) -> None:
    with pytest.raises(TypeError, match=r"gov\.openai\(\).*'feture' \(did you mean 'feature'\?\)"):
        gov.openai(_oa(sim), feture="chat")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"gov\.anthropic\(\).*'usr'"):
        gov.anthropic(_an(sim), usr="ann")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        gov.openai(_oa(sim), "chat")  # type: ignore[misc]


def test_with_options_and_copy_stay_governed(gov: Governor, sim: SimServer) -> None:
    oa = gov.openai(_oa(sim), feature="chat", user="opt").with_options(timeout=7.0)
    an = gov.anthropic(_an(sim), feature="claude", user="opt").copy(max_retries=1)
    assert type(oa).__name__ == "GovernedOpenAI" and oa.wrapped.timeout == 7.0
    assert type(an).__name__ == "GovernedAnthropic" and an.wrapped.max_retries == 1
    oa.chat.completions.create(model="gpt-4o-mini", messages=HI)
    an.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HI)
    assert [(r.user, r.feature) for r in rows(gov)] == [("opt", "chat"), ("opt", "claude")]


# ----------------------------------------------------------------- ledger shape


def _shape(row: CallRecord) -> set[str]:
    """Non-null fields; key_id is the one field only the gateway has (virtual keys)."""
    out = {f.name for f in fields(CallRecord) if getattr(row, f.name) not in (None, 0, "")}
    return out - {"key_id", "latency_ms", "ttft_ms", "upstream_ms", "cost_nusd"}


def _detail_keys(row: CallRecord) -> set[str]:
    return set(orjson.loads(row.detail)) if row.detail else set()


def _settled_rows(gw: RunningGateway, count: int) -> list[CallRecord]:
    """The gateway may settle a stream just after the client read its last byte."""
    got = eventually(lambda: rows if len(rows := gw.rows()) >= count else None)
    return sorted(got, key=lambda r: r.ts)


def test_ledger_rows_have_the_gateways_shape(
    gov: Governor, sim: SimServer, make_gateway: Callable[..., RunningGateway]
) -> None:
    gw = make_gateway(plans={**PLANS, **TINY_PLAN})
    key = gw.create_key("ann", "free")
    via_gw = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0,
                           default_headers={"X-Tallygate-Feature": "chat",
                                            "X-Tallygate-Run": "R1", "X-Tallygate-Step": "review",
                                            "X-Tallygate-Attempt": "2"})
    lib = gov.openai(_oa(sim), feature="chat", user="ann", plan="free", run="R1",
                     step="review", attempt=2)
    an_gw = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0,
                                default_headers={"X-Tallygate-Feature": "claude"})
    an_lib = gov.anthropic(_an(sim), feature="claude", user="ann", plan="free")
    for client in (via_gw, lib):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=900,
                                       user="end-1")
        list(client.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True))
    for aclient in (an_gw, an_lib):
        aclient.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HI)
    gw_rows, lib_rows = _settled_rows(gw, 3), rows(gov)
    assert len(gw_rows) == len(lib_rows) == 3
    for g, lrow in zip(gw_rows, lib_rows, strict=True):
        assert _shape(g) == _shape(lrow)
        assert _detail_keys(g) == _detail_keys(lrow)
        assert (g.input_tokens, g.output_tokens, g.cost_nusd, g.model_used, g.outcome) == (
            lrow.input_tokens, lrow.output_tokens, lrow.cost_nusd, lrow.model_used,
            lrow.outcome)
    assert gw_rows[0].key_id and lib_rows[0].key_id is None


def test_ungoverned_helpers_refuse_instead_of_bypassing(gov: Governor, sim: SimServer) -> None:
    oa = gov.openai(_oa(sim), user="u")
    an = gov.anthropic(_an(sim), user="u")
    for resource, name in ((oa.chat.completions, "parse"), (oa.chat.completions, "stream"),
                           (oa.responses, "with_raw_response"),
                           (an.messages, "with_streaming_response")):
        with pytest.raises(tallygate.InvalidRequest):
            getattr(resource, name)
    assert oa.models is not None  # other resources still pass through


def test_wrapping_the_wrong_client_is_a_clear_error(gov: Governor, sim: SimServer) -> None:
    with pytest.raises(tallygate.InvalidRequest, match="wraps an OpenAI or AsyncOpenAI"):
        gov.openai(_an(sim))
    with pytest.raises(tallygate.InvalidRequest, match="wraps an Anthropic or AsyncAnthropic"):
        gov.anthropic(_oa(sim))


def test_a_state_file_owned_by_a_gateway_is_refused_clearly(
        make_gov: Callable[..., Governor], sim: SimServer, tmp_path: Path) -> None:
    """A one-worker gateway owns its SQLite state (owner mode): a library process on the
    same file (shared mode under `auto`) gets StoreUnavailable naming the owner before
    anything reaches the provider; with `state_mode: owner` itself, it works alone."""
    import os

    from tallygate.state import from_url

    state = f"sqlite:///{tmp_path}/shared-state.db"
    owner = from_url(state, owner=True)
    try:
        gov = make_gov(storage={"state": state, "ledger": f"sqlite:///{tmp_path}/l.db"})
        client = gov.openai(_oa(sim), feature="chat", user="ann", plan="tiny")
        with pytest.raises(tallygate.StoreUnavailable, match=f"process {os.getpid()}"):
            client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        assert sim.stats.total == 0
        # A call no limit applies to holds nothing, so it never needs the store.
        free = gov.openai(_oa(sim), feature="chat", user="ann")
        assert free.chat.completions.create(model="gpt-4o-mini", messages=HI).usage
        assert sim.stats.total == 1
        gov.close()
    finally:
        asyncio.run(owner.close())
    alone = make_gov(storage={"state": state, "ledger": f"sqlite:///{tmp_path}/l.db",
                              "state_mode": "owner"})
    answer = alone.openai(_oa(sim), feature="chat", user="ann", plan="tiny"
                          ).chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert answer.usage.total_tokens > 0
    assert user_day(alone, "ann", 150).used == answer.usage.total_tokens


def test_record_cached_takes_only_a_governed_client(gov: Governor, sim: SimServer) -> None:
    from tallygate.errors import InvalidRequest
    from tallygate.types import Usage

    with pytest.raises(InvalidRequest, match=r"gov.openai\(\) or gov.anthropic\(\), got OpenAI"):
        gov.record_cached(_oa(sim), "chat/completions", "gpt-4o-mini", Usage(10, 5))
    client = gov.openai(_oa(sim), feature="chat", user="u1")
    row = gov.record_cached(client, "chat/completions", "gpt-4o-mini", Usage(10, 5), key="k1")
    assert row.outcome == Outcome.CACHED and row.user == "u1"
