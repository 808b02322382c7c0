"""`tallygate gen`: a plan's requests (plan.py) sent through a Governor — the engine's
budgets, the ledger's rows (run = the CI job, step = the chunk) — with the artifact
cache (artifacts.py) in front: a hit is written from the cache, costs no tokens and is
recorded as a `cached` row with the tokens it saved.

Calls go through the official SDK clients wrapped by `gov.openai(...)` /
`gov.anthropic(...)`, built from the policy's provider (base_url, api_key, timeout) with
`max_retries` = the feature's `retries`: the SDKs retry 408/409/429/5xx and connection
errors with exponential back-off, honouring `retry-after`. An answer is kept (written and
cached) only when whole: not cut at max_tokens, not a refusal, valid JSON when the piece
has a schema."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tallygate.ci.artifacts import Artifact, ArtifactCache
from tallygate.ci.plan import Chunk, Plan
from tallygate.config import Policy
from tallygate.errors import InvalidRequest, LimitError, TallygateError
from tallygate.providers import anthropic as anthropic_wire
from tallygate.providers import openai as openai_wire
from tallygate.types import Usage

MAX_ERROR_CHARS = 300


@dataclass(frozen=True, slots=True)
class GenOptions:
    out: Path
    feature: str
    user: str
    run: str
    retries: int = 2
    concurrency: int = 4
    refresh: bool = False  # regenerate every piece (and overwrite its cache entry)


@dataclass(slots=True)
class PieceResult:
    chunk: Chunk
    status: str = "pending"  # generated | cached | failed | skipped | planned
    called: bool = False
    usage: Usage = field(default_factory=Usage)
    cost_nusd: int = 0
    saved: Usage = field(default_factory=Usage)
    saved_nusd: int = 0
    file: str | None = None
    error: str | None = None


# ---------------------------------------------------------------- answers


def artifact_path(out: Path, chunk: Chunk) -> Path:
    return out / f"{chunk.name}.{'json' if chunk.schema is not None else 'md'}"


def answer_problem(content: str | None, truncated: bool, refusal: str | None,
                   chunk: Chunk, max_output: int) -> str | None:
    """Why an answer must not be kept, or None."""
    if refusal:
        return f"the model refused: {refusal[:MAX_ERROR_CHARS]}"
    if truncated:
        return (f"the answer was cut at max_output {max_output:,} tokens (raise max_output "
                "or split the piece)")
    if not content or not content.strip():
        return "the answer is empty"
    if chunk.schema is not None:
        try:
            json.loads(content)
        except ValueError:
            return "the answer is not JSON, though the piece has a schema"
    return None


def write_artifact(out: Path, chunk: Chunk, content: str) -> str:
    """Write atomically; JSON answers pretty-printed. The path written."""
    path = artifact_path(out, chunk)
    if chunk.schema is not None:
        text = json.dumps(json.loads(content), indent=2, ensure_ascii=False) + "\n"
    else:
        text = content if content.endswith("\n") else content + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(path)


def read_answer(protocol: str, response: Any) -> tuple[str | None, bool, str | None, Usage]:
    """(text, cut at max tokens?, refusal, usage) of an SDK response."""
    body = response.model_dump(mode="json", exclude_none=True)
    if protocol == "anthropic":
        text = "".join(b.get("text", "") for b in body.get("content") or []
                       if b.get("type") == "text")
        usage = anthropic_wire.usage_from_body("messages", body) or Usage()
        return text, body.get("stop_reason") == "max_tokens", None, usage
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    usage = openai_wire.usage_from_body("chat/completions", body) or Usage()
    return (message.get("content"), choice.get("finish_reason") == "length",
            message.get("refusal"), usage)


def sdk_errors(protocol: str) -> tuple[type[Exception], ...]:
    """The base class of the SDK's errors (status, connection, timeout, parsing)."""
    if protocol == "anthropic":
        import anthropic

        return (anthropic.AnthropicError,)
    import openai

    return (openai.OpenAIError,)


def sdk_error(exc: Exception) -> str:
    """One line for an SDK exception: the status and the provider's message."""
    status = getattr(exc, "status_code", None)
    message = str(getattr(exc, "message", None) or exc)[:MAX_ERROR_CHARS]
    if isinstance(status, int):
        return f"provider error {status}: {message}"
    return f"provider call failed ({type(exc).__name__}): {message}"


# ---------------------------------------------------------------- clients


def sdk_client(policy: Policy, plan: Plan, retries: int) -> Any:
    """The async SDK client of the model's provider, as the policy configures it."""
    name = plan.model.provider
    provider = policy.providers.get(name)
    if provider is None:
        raise InvalidRequest(f"model {plan.model.name!r} is served by provider {name!r}: add "
                             f"providers.{name} (protocol, base_url, api_key) to the policy")
    key = provider.api_key.get_secret_value() if provider.api_key else ""
    if not key:
        raise InvalidRequest(f"providers.{name}.api_key is empty: set it in the policy (the "
                             "built-in one reads OPENAI_API_KEY / ANTHROPIC_API_KEY); a "
                             "server that needs no key takes any value")
    options = {"base_url": provider.base_url, "api_key": key, "max_retries": retries,
               "timeout": provider.timeout, "default_headers": dict(provider.headers)}
    if plan.protocol == "anthropic":
        import anthropic

        return anthropic.AsyncAnthropic(**options)
    import openai

    return openai.AsyncOpenAI(**options)


def protocol_of(policy: Policy, provider: str) -> str:
    configured = policy.providers.get(provider)
    if configured is not None:
        return configured.protocol
    if provider in ("openai", "anthropic"):
        return provider
    raise InvalidRequest(f"provider {provider!r} is not in the policy's providers: add "
                         f"providers.{provider} with its protocol and base_url")


# ---------------------------------------------------------------- running


class Generator:
    """Runs one plan: cache lookups, governed calls, artifacts, cache writes."""

    def __init__(self, plan: Plan, policy: Policy, options: GenOptions,
                 cache: ArtifactCache | None) -> None:
        self.plan = plan
        self.policy = policy
        self.options = options
        self.cache = cache
        self.results = [PieceResult(c) for c in plan.chunks]
        self._stop: str | None = None  # set by a budget refusal: later pieces are skipped
        self._sdk_errors = sdk_errors(plan.protocol)

    async def run(self) -> list[PieceResult]:
        from tallygate.library.governor import Governor

        sdk = sdk_client(self.policy, self.plan, self.options.retries)
        try:
            async with Governor(self.policy) as gov:
                wrap = gov.anthropic if self.plan.protocol == "anthropic" else gov.openai
                client = wrap(sdk, feature=self.options.feature, user=self.options.user)
                gate = asyncio.Semaphore(max(1, self.options.concurrency))
                with gov.run(self.options.run):
                    await asyncio.gather(*(self._one(gov, client, gate, r)
                                           for r in self.results))
        finally:
            await sdk.close()
        return self.results

    async def _one(self, gov: Any, client: Any, gate: asyncio.Semaphore,
                   result: PieceResult) -> None:
        async with gate:
            if self._stop is not None:
                result.status, result.error = "skipped", self._stop
                return
            with gov.step(result.chunk.name):
                if await self._from_cache(gov, client, result):
                    return
                await self._generate(client, result)

    async def _from_cache(self, gov: Any, client: Any, result: PieceResult) -> bool:
        chunk = result.chunk
        if self.cache is None or self.options.refresh:
            return False
        found = await self.cache.get(chunk.key)
        if found is None or answer_problem(found.content, False, None, chunk, 1) is not None:
            return False
        try:  # the row first: a switched-off feature refuses hits too
            await asyncio.to_thread(gov.record_cached, client, self.plan.route, found.model,
                                    found.usage, chunk.key[4:20])
        except TallygateError as exc:
            result.status, result.error = "failed", exc.message
            return True
        result.file = write_artifact(self.options.out, chunk, found.content)
        result.status, result.saved = "cached", found.usage
        result.saved_nusd = self.plan.model.cost_nusd(found.usage)
        return True

    async def _generate(self, client: Any, result: PieceResult) -> None:
        chunk = result.chunk
        create = (client.messages.create if self.plan.protocol == "anthropic"
                  else client.chat.completions.create)
        try:
            response = await create(**chunk.body)
        except LimitError as exc:
            self._stop = f"not run: an earlier piece was refused ({exc.code})"
            result.status, result.error = "failed", exc.message
            return
        except TallygateError as exc:
            result.status, result.error = "failed", exc.message
            return
        except self._sdk_errors as exc:  # after the SDK's own retries
            result.called, result.status, result.error = True, "failed", sdk_error(exc)
            return
        result.called = True
        text, truncated, refusal, usage = read_answer(self.plan.protocol, response)
        result.usage, result.cost_nusd = usage, self.plan.model.cost_nusd(usage)
        problem = answer_problem(text, truncated, refusal, chunk, self.plan.max_output)
        if problem is not None or text is None:
            result.status, result.error = "failed", problem
            return
        result.file = write_artifact(self.options.out, chunk, text)
        result.status = "generated"
        if self.cache is not None:
            model = getattr(response, "model", None) or self.plan.model.name
            await self.cache.put(chunk.key, Artifact(text, str(model), usage))


async def dry_run(plan: Plan, cache: ArtifactCache | None) -> list[PieceResult]:
    """What `gen` would do: each chunk `cached` or `planned`, nothing called or written."""
    results = [PieceResult(c, status="planned") for c in plan.chunks]
    if cache is not None:
        for result in results:
            if await cache.get(result.chunk.key) is not None:
                result.status = "cached"
    return results
