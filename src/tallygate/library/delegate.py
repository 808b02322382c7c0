"""The wrapped SDK objects' base: everything not governed is the SDK's own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from tallygate.errors import InvalidRequest

if TYPE_CHECKING:
    from tallygate.library.binding import Binding


class Delegate:
    """Forwards every attribute it does not define to the wrapped SDK object."""

    def __init__(self, inner: Any, binding: Binding) -> None:
        self._inner = inner
        self._binding = binding

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"<governed {self._inner!r}>"


class GovernedClient(Delegate):
    """A whole governed SDK client: same API as the wrapped one for what it governs (the
    subclass binds those resources in `__init__`); the rest is delegated."""

    @property
    def wrapped(self) -> Any:
        """The SDK client underneath (calls made on it directly are not governed)."""
        return self._inner

    def with_options(self, **options: Any) -> Self:
        inner = self._inner.with_options(**options)
        return type(self)(inner, self._binding.with_client(inner))

    copy = with_options


def binding_of(client: Any) -> Binding:
    """The attribution and governor behind a client `gov.openai()`/`gov.anthropic()` made."""
    if not isinstance(client, Delegate):
        raise InvalidRequest(
            f"expected a client made by gov.openai() or gov.anthropic(), got "
            f"{type(client).__name__}")
    return client._binding


# Other ways to call the model on a governed resource: refused rather than let through
# ungoverned, since a silent bypass would break the budget guarantee.
BYPASSES = frozenset({"parse", "stream", "with_raw_response", "with_streaming_response"})
