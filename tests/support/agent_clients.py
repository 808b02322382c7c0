"""A client that retries the way Codex CLI does (agents-wire research): it honours only
`Retry-After` and an `insufficient_quota` error, never `x-should-retry`. Its sleep is
bounded so a gateway that invites a long sleep fails the test at once instead of
hanging it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.support.gateway import http

QUOTA = "insufficient_quota"


class WouldSleep(AssertionError):
    """The server asked this client to wait longer than the test allows."""


@dataclass
class CodexStyleResult:
    status: int
    headers: dict[str, str]
    body: bytes
    attempts: int
    slept: list[float] = field(default_factory=list)

    @property
    def error(self) -> dict[str, Any]:
        try:
            obj = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return {}
        err = obj.get("error") if isinstance(obj, dict) else None
        return err if isinstance(err, dict) else {}


def bounded_sleep(limit: float) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        if seconds > limit:
            raise WouldSleep(f"the server asked for a {seconds:.0f} s wait before retrying")
        time.sleep(seconds)
    return sleep


def codex_style_post(url: str, body: Mapping[str, Any], headers: Mapping[str, str], *,
                     max_retries: int = 4, sleep: Callable[[float], None] | None = None,
                     ) -> CodexStyleResult:
    """POST like Codex: a 429 whose error type or code is `insufficient_quota` ends the
    turn and shows the message; any other 429/5xx is retried after `Retry-After`
    seconds when given, else after an exponential back-off."""
    sleep = sleep or bounded_sleep(1.0)
    slept: list[float] = []
    raw = orjson.dumps(body)
    for attempt in range(max_retries + 1):
        status, out_headers, out = http("POST", url, raw, {"content-type": "application/json",
                                                           **headers})
        result = CodexStyleResult(status, out_headers, out, attempt + 1, slept)
        if status != 429 and status < 500:
            return result
        err = result.error
        if QUOTA in (err.get("type"), err.get("code")) or attempt == max_retries:
            return result
        delay = _retry_after(out_headers)
        delay = 0.2 * 2**attempt if delay is None else delay
        slept.append(delay)
        sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
