"""What the engine's helpers (recovery, the summarizer) may ask of the engine that owns
the call: they are typed against this shape, so they need not import the engine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from tallygate.config import Policy
from tallygate.engine.retry import RetrySettings

if TYPE_CHECKING:
    from tallygate.engine.call import Call, CallContext
    from tallygate.engine.ports import Answer, Port


class CallOwner(Protocol):
    policy: Policy
    retry: RetrySettings

    def fallback_models(self, call: Call) -> list[str]: ...

    async def move_to(self, call: Call, model_name: str, *, reason: str) -> None: ...

    async def trim_input(self, call: Call, target: int) -> bool: ...

    async def run(self, ctx: CallContext, body: dict[str, Any], port: Port, *,
                  cache: bool | None = None) -> tuple[Call, Answer]: ...
