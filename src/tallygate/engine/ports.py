"""The engine's one way out: a front door's `Port` sends a call's body to its model once.

The gateway's port speaks HTTP to the configured provider (gateway/port.py); the
library's calls the wrapped SDK client (library/port.py). Retries, context-length
recovery, fallbacks, settling and recording are the engine's (engine/recovery.py): a
port never loops, never settles, never records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tallygate.errors import TallygateError, UpstreamError
from tallygate.providers.common import UpstreamFault
from tallygate.types import Usage

if TYPE_CHECKING:
    from tallygate.engine.call import Call


@dataclass(slots=True)
class Answer:
    """What one upstream try gave: a 200 (a body, an SDK object, or an open stream), the
    upstream's error answer (`fault`), or a failure to get one (`error`: timeout,
    unreachable, no provider). `raised` keeps the SDK's own exception (library) so the
    caller sees exactly what the SDK would have raised."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    stream: Any = None  # the open stream (gateway: StreamBody; library: the SDK's Stream)
    payload: Any = None  # the SDK's response object (library)
    usage: Usage | None = None  # when the port read it itself (library: from the SDK object)
    fault: UpstreamFault | None = None
    error: TallygateError | None = None
    raised: BaseException | None = None
    cached: bool = False  # served from the response cache: `body` is the stored answer

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None and self.fault is None

    @property
    def worth_a_fallback(self) -> bool:
        """Another model might succeed where this one failed."""
        if self.error is not None:
            return isinstance(self.error, UpstreamError)
        return self.fault is not None and (self.fault.retryable or self.fault.context_length)

    @property
    def error_code(self) -> str:
        if self.error is not None:
            return self.error.code
        if self.fault is not None and self.fault.code:
            return self.fault.code
        return "upstream"


def transport_fault(exc: UpstreamError) -> UpstreamFault:
    """A timeout or an unreachable upstream, as the retry policy sees it."""
    return UpstreamFault(status=exc.upstream_status, retryable=True, context_length=False,
                         retry_after=None, retry_at=None, type=None, code=exc.code,
                         message=exc.message)


class Port(Protocol):
    """Sends `call.body` (policy's changes applied) to `call.model` once."""

    async def send(self, call: Call, *, timeout: float) -> Answer: ...

    def provider_timeout(self, call: Call) -> float:
        """The per-try timeout of the call's provider, in seconds."""
        ...
