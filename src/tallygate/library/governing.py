"""What a governed client needs of its Governor: the wrappers and streams depend on this
shape, not on `Governor` itself (library/governor.py is the one implementation)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol

from tallygate.config import Policy


class GovernorPort(Protocol):
    """What a governed client needs of its Governor (library/governor.py is one)."""

    @property
    def policy(self) -> Policy: ...

    def call(self, make: Any, *args: Any, **kwargs: Any) -> Any: ...

    async def acall(self, make: Any, *args: Any, **kwargs: Any) -> Any: ...

    def fire(self, make: Any, *args: Any, **kwargs: Any) -> None: ...

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Any: ...
