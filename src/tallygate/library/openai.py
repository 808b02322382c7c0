"""`gov.openai(client)`: an OpenAI / AsyncOpenAI client whose calls are governed.

Governed: `chat.completions.create` (streaming or not), `responses.create` (streaming or
not), `embeddings.create`. On those resources the other model-calling helpers
(`.parse()`, `.stream()`, `with_raw_response`, `with_streaming_response`) raise instead
of bypassing the budgets; every other attribute (other resources, `models.list()` …) is
the wrapped client's own (see docs/library.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tallygate.errors import InvalidRequest
from tallygate.library.binding import Binding, is_async_client
from tallygate.library.delegate import BYPASSES, Delegate, GovernedClient

if TYPE_CHECKING:
    from tallygate.library.attribution import Attribution
    from tallygate.library.governing import GovernorPort


class GovernedCreate(Delegate):
    """A resource whose `create(**kwargs)` is governed on `route`."""

    route = ""

    def __getattr__(self, name: str) -> Any:
        if name in BYPASSES:
            raise InvalidRequest(
                f"{self.route}: `.{name}` is not governed by tallygate; use `.create(...)`, "
                f"or call `client.wrapped` for a deliberately ungoverned call.")
        return super().__getattr__(name)

    def create(self, **kwargs: Any) -> Any:
        if self._binding.is_async:
            return self._binding.acreate(self.route, kwargs)
        return self._binding.create(self.route, kwargs)


class Completions(GovernedCreate):
    route = "chat/completions"


class Responses(GovernedCreate):
    route = "responses"


class Embeddings(GovernedCreate):
    route = "embeddings"


class Chat(Delegate):
    def __init__(self, inner: Any, binding: Binding) -> None:
        super().__init__(inner, binding)
        self.completions = Completions(inner.completions, binding)


class GovernedOpenAI(GovernedClient):
    """Same API as the wrapped client for what it governs; the rest is delegated."""

    def __init__(self, client: Any, binding: Binding) -> None:
        super().__init__(client, binding)
        self.chat = Chat(client.chat, binding)
        self.responses = Responses(client.responses, binding)
        self.embeddings = Embeddings(client.embeddings, binding)


def wrap_openai(gov: GovernorPort, client: Any, attribution: Attribution) -> GovernedOpenAI:
    try:
        import openai
    except ImportError:  # pragma: no cover - the openai extra is not installed
        raise InvalidRequest("gov.openai() needs the `openai` package installed.") from None
    is_async = is_async_client(client, openai.OpenAI, openai.AsyncOpenAI, "gov.openai()")
    return GovernedOpenAI(client, Binding(gov, "openai", attribution, is_async, client))
