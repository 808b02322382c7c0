"""Who a call belongs to when the client sets no tallygate header: coding agents' own
session ids become runs, and the end user comes from the body. Pure.

What the agents send (docs/agents.md):
- Claude Code: `x-claude-code-session-id: <uuid>`, and `metadata.user_id` as a JSON
  *string* `{"device_id": …, "account_uuid": …, "session_id": …}`.
- Codex CLI: `session-id` and `thread-id` headers.
- OpenAI clients: the body's `user` field; other Anthropic clients: a plain
  `metadata.user_id`.

An explicit `X-Tallygate-Run` always wins. Every name is bounded (`MAX_NAME` characters)
and stripped of control and other non-printable characters; an empty result is None."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import orjson

MAX_NAME = 256
MAX_METADATA_JSON = 4_096  # a longer metadata.user_id is not parsed as JSON
RUN_HEADER = "x-tallygate-run"
CLAUDE_CODE_SESSION = "x-claude-code-session-id"
CODEX_SESSION = "session-id"
CODEX_THREAD = "thread-id"
# In the order an end user is picked from the rest of Claude Code's metadata JSON.
_IDENTITY_KEYS = ("account_uuid", "device_id")


class AttributionRules(Protocol):
    """What attribution reads of the policy (`config.Attribution` is one)."""

    @property
    def agent_sessions(self) -> bool: ...
    @property
    def session_headers(self) -> Sequence[str]: ...
    @property
    def session_from_metadata(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class DefaultRules:
    """The built-in rules, the same as an empty `attribution:` section."""

    agent_sessions: bool = True
    session_headers: tuple[str, ...] = (CLAUDE_CODE_SESSION, CODEX_SESSION, CODEX_THREAD)
    session_from_metadata: bool = True


DEFAULT_RULES = DefaultRules()


class Attribution(NamedTuple):
    run: str | None
    end_user: str | None


def clean_name(value: Any) -> str | None:
    """A caller-supplied name made safe to store and print: a string, printable
    characters only, trimmed, at most MAX_NAME characters; anything else is None."""
    if not isinstance(value, str):
        return None
    text = value if value.isprintable() else "".join(c for c in value if c.isprintable())
    text = text.strip()[:MAX_NAME].strip()
    return text or None


def agent_attribution(
    headers: Mapping[str, str], body: Any, rules: AttributionRules | None = None
) -> Attribution:
    """(run, end user) of one call. `headers` has lower-cased names (as the gateway's
    header_map gives them); `body` is the parsed request body (anything: it is read
    defensively, never trusted)."""
    rules = rules or DEFAULT_RULES
    session, user = metadata_identity(body)
    run = clean_name(headers.get(RUN_HEADER))
    if run is None and rules.agent_sessions:
        for name in rules.session_headers:
            run = clean_name(headers.get(name))
            if run is not None:
                break
        if run is None and rules.session_from_metadata:
            run = session
    return Attribution(run, user)


def end_user(body: Any) -> str | None:
    """The end user a body names: the OpenAI `user` field, else Anthropic's
    `metadata.user_id` (for Claude Code's JSON form, its identity without the session)."""
    return metadata_identity(body)[1]


def metadata_identity(body: Any) -> tuple[str | None, str | None]:
    """(session id, end user) from the body's `user` / `metadata.user_id`."""
    if not isinstance(body, Mapping):
        return None, None
    user = clean_name(body.get("user"))
    meta = body.get("metadata")
    raw = meta.get("user_id") if isinstance(meta, Mapping) else None
    if not isinstance(raw, str):
        return None, user
    parsed = _json_object(raw)
    if parsed is None:
        return None, user or clean_name(raw)
    session = clean_name(parsed.pop("session_id", None))
    return session, user or _identity(parsed)


def _json_object(raw: str) -> dict[str, Any] | None:
    text = raw.strip()
    if not text.startswith("{") or len(text) > MAX_METADATA_JSON:
        return None
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _identity(rest: dict[str, Any]) -> str | None:
    """Claude Code's account id, else its device id, else what else the JSON holds."""
    for key in _IDENTITY_KEYS:
        found = clean_name(rest.get(key))
        if found is not None:
            return found
    rest = {k: v for k, v in rest.items() if k not in _IDENTITY_KEYS}
    if not rest:
        return None
    return clean_name(orjson.dumps(rest, option=orjson.OPT_SORT_KEYS).decode())
