"""Bounds on every value a caller chooses that the engine stores, counts or keys on.

Names (feature, run, step, user) become parts of limit keys and ledger columns; a
number becomes a ledger integer. Each is checked once, at the front door, and refused
with a 4xx naming the header or argument — never truncated silently, never let
through to fail deeper (a 2**64 attempt number once stopped the ledger writer)."""

from __future__ import annotations

from typing import Any

from tallygate.errors import InvalidRequest

MAX_NAME = 256  # characters of a feature, run, step or user name
MAX_CLIENT_ID = 128  # characters of a client's own request id
MAX_ATTEMPT = 1_000_000  # a loop counter; far beyond any real review loop
MAX_DEPTH = 64  # nesting levels of a request body (orjson cannot write past 254)
MAX_USAGE = 10**12  # tokens an upstream may report for one call before we call it absurd


def name(value: Any, what: str) -> str | None:
    """A caller-chosen name: None (absent) or 1–256 printable characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be a string.", param=what)
    if not value or len(value) > MAX_NAME:
        raise InvalidRequest(f"{what} must be 1 to {MAX_NAME} characters long.", param=what)
    if not value.isprintable():
        raise InvalidRequest(f"{what} must not contain control characters.", param=what)
    return value


def client_id(value: str | None) -> str | None:
    """The caller's own request id: 1–128 visible ASCII characters (it is echoed in a
    response header), or None."""
    if value is None:
        return None
    if (not value or len(value) > MAX_CLIENT_ID or not value.isascii()
            or not all("!" <= ch <= "~" for ch in value)):
        raise InvalidRequest(
            f"X-Tallygate-Request-Id must be 1 to {MAX_CLIENT_ID} visible ASCII characters.",
            param="X-Tallygate-Request-Id")
    return value


def attempt(value: Any, what: str = "X-Tallygate-Attempt") -> int | None:
    """A loop counter: None, or an integer from 0 to MAX_ATTEMPT (text from a header)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 7:
            raise InvalidRequest(
                f"{what} must be an integer from 0 to {MAX_ATTEMPT}.", param=what)
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ATTEMPT:
        raise InvalidRequest(f"{what} must be an integer from 0 to {MAX_ATTEMPT}.", param=what)
    return value


def check_depth(body: Any, limit: int = MAX_DEPTH) -> None:
    """InvalidRequest when `body` nests deeper than `limit` anywhere. Run once per request
    before anything serialises or walks the body (a 100-turn conversation is a few
    hundred nodes: exact JSON types are checked first, the ABC-free way)."""
    stack = [(body, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        kind = type(node)
        if kind is dict or (kind is not list and isinstance(node, dict)):
            children: Any = node.values()
        elif kind is list or isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            raise InvalidRequest(f"The request body nests deeper than {limit} levels.")
        for child in children:
            kind = type(child)
            if kind is dict or kind is list or (
                    kind is not str and isinstance(child, dict | list)):
                push((child, depth + 1))


def usage_is_sane(*values: int) -> bool:
    """Every token figure an upstream reported is a plausible count."""
    return all(0 <= v <= MAX_USAGE for v in values)
