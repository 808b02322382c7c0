"""`gov.anthropic(client)`: an Anthropic / AsyncAnthropic client whose calls are governed.

Governed: `messages.create` (streaming or not) and the `messages.stream(...)` context
manager (the SDK's own MessageStream helper, fed by a governed raw stream, so
`text_stream`, `get_final_message()` … work unchanged). `messages.count_tokens` is the
provider's free, exact count: it is passed through, with no budget (as on the gateway,
where it costs nothing either). Every other attribute is the wrapped client's own and is
*not* governed (see docs/library.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tallygate.errors import InvalidRequest
from tallygate.library.binding import Binding, is_async_client
from tallygate.library.delegate import BYPASSES, Delegate, GovernedClient

if TYPE_CHECKING:
    from tallygate.library.attribution import Attribution
    from tallygate.library.governing import GovernorPort

ROUTE = "messages"


class Messages(Delegate):
    def __getattr__(self, name: str) -> Any:
        if name in BYPASSES:  # would call the model around the budgets
            raise InvalidRequest(
                f"messages: `.{name}` is not governed by tallygate; use `.create(...)` or "
                "`.stream(...)`, or `client.wrapped` for a deliberately ungoverned call.")
        return super().__getattr__(name)

    def create(self, **kwargs: Any) -> Any:
        if self._binding.is_async:
            return self._binding.acreate(ROUTE, kwargs)
        return self._binding.create(ROUTE, kwargs)

    def count_tokens(self, **kwargs: Any) -> Any:
        """The provider's exact input count (free; no budget is held or charged)."""
        return self._inner.count_tokens(**kwargs)

    def stream(self, **kwargs: Any) -> Any:
        """`with client.messages.stream(...) as stream:` — governed like create(stream=True)."""
        given = kwargs.pop("output_format", None)
        if given is not None and type(given).__name__ not in ("NotGiven", "Omit"):
            raise InvalidRequest(
                "messages.stream(output_format=…) is not supported through tallygate: pass "
                "the JSON schema as output_config={'format': …} instead.",
                param="output_format")
        kwargs["stream"] = True
        if self._binding.is_async:
            return AsyncMessageStreamManager(
                lambda: self._binding.acreate(ROUTE, kwargs))
        return MessageStreamManager(
            lambda: self._binding.create(ROUTE, kwargs))


class MessageStreamManager:
    """Admits on enter (raising tallygate errors there, like the SDK raises its own);
    the stream settles when read to the end or when the block exits early."""

    def __init__(self, start: Callable[[], Any]) -> None:
        self._start = start
        self._stream: Any = None

    def __enter__(self) -> Any:
        from anthropic import NOT_GIVEN
        from anthropic.lib.streaming import MessageStream

        self._stream = MessageStream(self._start(), output_format=NOT_GIVEN)
        return self._stream

    def __exit__(self, *exc: object) -> None:
        if self._stream is not None:
            self._stream.close()


class AsyncMessageStreamManager:
    def __init__(self, start: Callable[[], Awaitable[Any]]) -> None:
        self._start = start
        self._stream: Any = None

    async def __aenter__(self) -> Any:
        from anthropic import NOT_GIVEN
        from anthropic.lib.streaming import AsyncMessageStream

        self._stream = AsyncMessageStream(await self._start(), output_format=NOT_GIVEN)
        return self._stream

    async def __aexit__(self, *exc: object) -> None:
        if self._stream is not None:
            await self._stream.close()


class GovernedAnthropic(GovernedClient):
    """Same API as the wrapped client for what it governs; the rest is delegated."""

    def __init__(self, client: Any, binding: Binding) -> None:
        super().__init__(client, binding)
        self.messages = Messages(client.messages, binding)


def wrap_anthropic(gov: GovernorPort, client: Any, attribution: Attribution) -> GovernedAnthropic:
    try:
        import anthropic
    except ImportError:  # pragma: no cover - the anthropic extra is not installed
        raise InvalidRequest("gov.anthropic() needs the `anthropic` package installed.") from None
    is_async = is_async_client(client, anthropic.Anthropic, anthropic.AsyncAnthropic,
                               "gov.anthropic()")
    return GovernedAnthropic(client, Binding(gov, "anthropic", attribution, is_async, client))
