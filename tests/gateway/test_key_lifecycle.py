"""A key's life at the gateway, with the official SDKs: past its `expires_at` it is
refused 401 `key_expired` in each protocol's own error format (told apart from an
unknown key); rotated, its old secret is refused at once on this gateway and the new one
works under the same key id."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import anthropic
import openai
import orjson
import pytest

from tallygate.keys import open_keystore
from tests.support.gateway import ADMIN_KEY, RunningGateway, http

HELLO = [{"role": "user", "content": "Hello!"}]


def _expired_key(tmp_path: Path) -> tuple[str, str]:
    """A key written by a store whose clock is a day behind, expiring an hour after that
    clock's now: expired for the gateway (the same ledger file)."""
    async def make() -> tuple[str, str]:
        past = time.time() - 86_400
        store = await open_keystore(f"sqlite:///{tmp_path}/ledger.db", clock=lambda: past)
        try:
            key, secret = await store.create("old", "pro", expires_at=int(past) + 3600)
        finally:
            await store.close()
        return key.id, secret

    return asyncio.run(make())


def test_an_expired_key_is_401_key_expired_in_each_protocol(gateway: RunningGateway,
                                                            tmp_path: Path) -> None:
    key_id, secret = _expired_key(tmp_path)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0,
                           default_headers={"X-Tallygate-Feature": "chat"})
    with pytest.raises(openai.AuthenticationError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    body = refused.value.body
    assert isinstance(body, dict) and body["code"] == "key_expired"
    assert key_id in body["message"] and "expired at" in body["message"]
    assert secret not in str(body)
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0,
                                 default_headers={"X-Tallygate-Feature": "claude"})
    with pytest.raises(anthropic.AuthenticationError) as too:
        claude.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HELLO)  # type: ignore[arg-type]
    error = too.value.body
    assert isinstance(error, dict) and error["type"] == "error"
    assert error["error"]["type"] == "authentication_error"
    assert "expired" in error["error"]["message"]
    # An unknown key still says what it always said.
    status, _, raw = http("POST", gateway.url + "/v1/chat/completions",
                          orjson.dumps({"model": "gpt-4o-mini", "messages": HELLO}),
                          {"authorization": "Bearer tg-" + "x" * 40,
                           "content-type": "application/json"})
    assert status == 401 and orjson.loads(raw)["error"]["code"] == "invalid_api_key"


def test_a_rotated_key_refuses_its_old_secret_at_once(gateway: RunningGateway) -> None:
    old = gateway.create_key("rot", "free")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=old, max_retries=0,
                           default_headers={"X-Tallygate-Feature": "chat"})
    first = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert first.usage is not None  # the old secret is now in this gateway's key cache
    [listed] = [k for k in orjson.loads(http(
        "GET", gateway.url + "/admin/keys", None,
        {"authorization": f"Bearer {ADMIN_KEY}"})[2])["data"] if k["user"] == "rot"]
    status, _, raw = http("POST", f"{gateway.url}/admin/keys/{listed['id']}/rotate", b"{}",
                          {"authorization": f"Bearer {ADMIN_KEY}",
                           "content-type": "application/json"})
    assert status == 200, raw
    rotated = orjson.loads(raw)
    assert rotated["id"] == listed["id"] and rotated["key"] != old
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    fresh = openai.OpenAI(base_url=gateway.url + "/v1", api_key=rotated["key"],
                          max_retries=0, default_headers={"X-Tallygate-Feature": "chat"})
    second = fresh.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert second.status_code == 200
    rows = [r for r in gateway.rows() if r.user == "rot" and r.status == 200]
    # One key's calls before and after: its id, and so its counters, stayed.
    assert len(rows) == 2 and {r.key_id for r in rows} == {listed["id"]}
