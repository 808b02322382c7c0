"""Agent sessions as runs: which header wins, Claude Code's metadata.user_id JSON split
into a session and an end user, the policy's `attribution:` rules, hostile values."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tallygate.config import Policy
from tallygate.errors import ConfigError
from tallygate.providers.common import end_user
from tallygate.providers.sessions import MAX_NAME, Attribution, agent_attribution, clean_name

SESSION = "9b2f7d0e-5c1a-4c47-9a31-0d4b8c1e2f3a"
META = {"metadata": {"user_id": orjson.dumps(
    {"device_id": "d3v1ce", "account_uuid": "", "session_id": "from-metadata"}).decode()}}


def test_claude_code_session_header_is_the_run() -> None:
    got = agent_attribution({"x-claude-code-session-id": SESSION}, META)
    assert got == Attribution(SESSION, "d3v1ce")
    run, user = got  # (a plain pair for the caller)
    assert (run, user) == (SESSION, "d3v1ce")


def test_metadata_session_when_no_header() -> None:
    assert agent_attribution({}, META) == ("from-metadata", "d3v1ce")
    with_account = {"metadata": {"user_id": orjson.dumps(
        {"device_id": "d", "account_uuid": "acct-1", "session_id": "s"}).decode()}}
    assert agent_attribution({}, with_account) == ("s", "acct-1")


def test_codex_headers_session_before_thread() -> None:
    assert agent_attribution({"session-id": "s1", "thread-id": "t1"}, {}).run == "s1"
    assert agent_attribution({"thread-id": "t1"}, {"user": "alice"}) == ("t1", "alice")


def test_explicit_run_header_wins() -> None:
    headers = {"x-tallygate-run": "ticket-42", "x-claude-code-session-id": SESSION}
    assert agent_attribution(headers, META).run == "ticket-42"


def test_plain_metadata_user_id_is_the_end_user() -> None:
    assert agent_attribution({}, {"metadata": {"user_id": "user-7"}}) == (None, "user-7")
    assert end_user({"metadata": {"user_id": "user-7"}}) == "user-7"
    assert end_user(META) == "d3v1ce"  # never the whole blob with the session in it
    other = {"metadata": {"user_id": '{"team": "core", "session_id": "x"}'}}
    assert agent_attribution({}, other) == ("x", '{"team":"core"}')


def test_rules_from_the_policy() -> None:
    off = Policy.from_mapping({"attribution": {"agent_sessions": False}}).attribution
    assert agent_attribution({"x-claude-code-session-id": SESSION}, META, off) == (
        None, "d3v1ce")
    only_meta = Policy.from_mapping({"attribution": {"session_headers": []}}).attribution
    assert agent_attribution({"session-id": "s1"}, META, only_meta).run == "from-metadata"
    no_meta = Policy.from_mapping({"attribution": {"session_from_metadata": False}})
    assert agent_attribution({}, META, no_meta.attribution) == (None, "d3v1ce")
    extra = Policy.from_mapping({"attribution": {"session_headers": ["X-Agent-Session"]}})
    assert extra.attribution.session_headers == ("x-agent-session",)
    assert agent_attribution({"x-agent-session": "a1"}, {}, extra.attribution).run == "a1"
    with pytest.raises(ConfigError, match="not an HTTP header name"):
        Policy.from_mapping({"attribution": {"session_headers": ["bad header"]}})
    with pytest.raises(ConfigError, match="did you mean 'agent_sessions'"):
        Policy.from_mapping({"attribution": {"agent_session": True}})


def test_names_are_bounded_and_printable() -> None:
    assert clean_name("a" * 5000) == "a" * MAX_NAME
    assert clean_name("run\x00\x1b[31m-1\n") == "run[31m-1"
    assert clean_name("   ") is None
    assert clean_name(42) is None
    long_meta = {"metadata": {"user_id": '{"session_id": "' + "s" * 9000 + '"}'}}
    run, user = agent_attribution({}, long_meta)
    assert run is None and user is not None and len(user) == MAX_NAME  # not parsed: too long


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids,
                                                             max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(body=json_values | st.fixed_dictionaries({}, optional={
    "user": json_values, "metadata": json_values | st.fixed_dictionaries(
        {"user_id": json_values | st.builds(lambda v: orjson.dumps(v).decode(), json_values)})}),
       session=st.text(max_size=300))
def test_any_input_gives_bounded_names(body: object, session: str) -> None:
    run, user = agent_attribution({"session-id": session}, body)
    for name in (run, user):
        assert name is None or (0 < len(name) <= MAX_NAME and name.isprintable())
