"""The admin routes mounted in a bare Starlette app, driven over ASGI by TestClient."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from tallygate.config import Policy
from tallygate.config.names import PolicyNames
from tallygate.gateway.admin import admin_routes
from tallygate.gateway.auth import authenticate
from tallygate.keys import MemoryKeyStore

ADMIN = "admin-secret-123"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def store() -> MemoryKeyStore:
    return MemoryKeyStore()


@pytest.fixture
def client(store: MemoryKeyStore) -> Iterator[TestClient]:
    names = PolicyNames(Policy.from_mapping(
        {"plans": {"free": {}, "pro": {}, "enterprise": {}},
         "features": {"chat": {}, "code_review": {}}}))
    app = Starlette(routes=admin_routes(store, ADMIN, names=names, max_body=4096))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]
    return dict(error)


def test_admin_disabled_is_403(store: MemoryKeyStore) -> None:
    for admin_key in (None, ""):
        app = Starlette(routes=admin_routes(store, admin_key))
        with TestClient(app) as c:
            error = assert_error(c.get("/admin/keys", headers=AUTH), 403, "permission_denied")
            assert "disabled" in error["message"] and "TALLYGATE_ADMIN_KEY" in error["message"]


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN},
    {"Authorization": f"Basic {ADMIN}"}, {"x-api-key": ADMIN},
    {"Authorization": f"Bearer {ADMIN}x"}, {"Authorization": "Bearer é".encode("latin-1")},  # type: ignore[dict-item]
])
def test_wrong_admin_key_is_401(client: TestClient, headers: dict[str, str]) -> None:
    for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys"),
                         ("DELETE", "/admin/keys/key_x"), ("GET", "/admin/keys/key_x"),
                         ("PATCH", "/admin/keys/key_x")):
        error = assert_error(client.request(method, path, headers=headers), 401,
                             "invalid_api_key")
        assert ADMIN not in error["message"]


async def test_create_list_revoke(client: TestClient, store: MemoryKeyStore) -> None:
    body = {"user": "u1", "plan": "pro", "name": "ci", "features": ["chat"],
            "models": ["gpt-4o"], "limits": {"tokens_per_day": 50000}}
    created = client.post("/admin/keys", json=body, headers=AUTH)
    assert created.status_code == 201
    data = created.json()
    secret = data["key"]
    assert secret.startswith("tg-") and data["id"].startswith("key_")
    assert {k: data[k] for k in body} == body
    assert data["revoked_at"] is None
    # the secret works against the same store
    key = await authenticate(store, {"authorization": f"Bearer {secret}"})
    assert key.id == data["id"]

    listed = client.get("/admin/keys", headers=AUTH)
    assert listed.status_code == 200
    assert [k["id"] for k in listed.json()["data"]] == [data["id"]]
    assert secret not in listed.text and "hash" not in listed.text
    single = client.get(f"/admin/keys/{data['id']}", headers=AUTH)
    assert single.status_code == 200 and secret not in single.text

    revoked = client.delete(f"/admin/keys/{data['id']}", headers=AUTH)
    assert revoked.status_code == 200
    assert revoked.json()["revoked"] is True and revoked.json()["revoked_at"] is not None
    assert await store.verify(secret) is None
    assert client.get("/admin/keys", headers=AUTH).json()["data"] == []
    assert len(client.get("/admin/keys?all=true", headers=AUTH).json()["data"]) == 1
    assert_error(client.delete("/admin/keys/key_nope", headers=AUTH), 404, "not_found")
    assert_error(client.get("/admin/keys/key_nope", headers=AUTH), 404, "not_found")


def test_minimal_create(client: TestClient) -> None:
    created = client.post("/admin/keys", json={"user": "u", "plan": "free"}, headers=AUTH)
    assert created.status_code == 201
    data = created.json()
    assert data["features"] == [] and data["models"] == [] and data["limits"] == {}
    assert data["name"] is None


BAD_BODIES: list[bytes] = [
    b"", b"{", b"not json", b"[]", b"null", b"42", b'"x"', b"\xff\xfe{}",
    b'{"user": "u"}', b'{"plan": "free"}', b'{"user": 1, "plan": "free"}',
    b'{"user": "u", "plan": "gold"}', b'{"user": "", "plan": "free"}',
    b'{"user": "u", "plan": "free", "extra": 1}',
    b'{"user": "u", "plan": "free", "features": "chat"}',
    b'{"user": "u", "plan": "free", "features": [1]}',
    b'{"user": "u", "plan": "free", "features": {"a": 1}}',
    b'{"user": "u", "plan": "free", "models": [null]}',
    b'{"user": "u", "plan": "free", "limits": []}',
    b'{"user": "u", "plan": "free", "limits": {"tokens_per_day": -5}}',
    b'{"user": "u", "plan": "free", "limits": {"tokens_per_day": "5"}}',
    b'{"user": "u", "plan": "free", "limits": {"tokens_per_day": true}}',
    b'{"user": "u", "plan": "free", "limits": {"tokens_per_week": 5}}',
    b'{"user": "u", "plan": "free", "limits": {"cost_usd_per_day": 1e999}}',
    b'{"user": "u", "plan": "free", "name": 7}',
    b'{"user": "' + b"u" * 300 + b'", "plan": "free"}',
    b"[" * 3000,
]


@pytest.mark.parametrize("raw", BAD_BODIES)
def test_malformed_bodies_are_400(client: TestClient, raw: bytes) -> None:
    response = client.post("/admin/keys", content=raw, headers=AUTH)
    assert_error(response, 400, "invalid_request")
    assert client.get("/admin/keys", headers=AUTH).json()["data"] == []


def test_unknown_plan_names_known_plans(client: TestClient) -> None:
    error = assert_error(client.post("/admin/keys", json={"user": "u", "plan": "gold"},
                                     headers=AUTH), 400, "invalid_request")
    assert "free" in error["message"] and error["param"] == "plan"


@pytest.mark.parametrize(("field", "typo", "hint"), [
    ("plan", "enterprize", "enterprise"),
    ("features", ["code_reveiw"], "code_review"),
    ("models", ["gpt-4o-mni"], "gpt-4o-mini"),
])
def test_create_refuses_a_typo(client: TestClient, store: MemoryKeyStore, field: str,
                               typo: object, hint: str) -> None:
    """The admin API door: the same PolicyNames.check_key as `tallygate keys create`."""
    body = {"user": "u", "plan": "pro", field: typo}
    error = assert_error(client.post("/admin/keys", json=body, headers=AUTH), 400,
                         "invalid_request")
    assert f"did you mean {hint!r}" in error["message"] and error["param"] == field
    assert asyncio.run(store.list(include_revoked=True)) == []


def test_create_refuses_a_mistyped_field(client: TestClient, store: MemoryKeyStore) -> None:
    body = {"user": "u", "plan": "pro", "limts": {"tokens_per_day": 5}}
    error = assert_error(client.post("/admin/keys", json=body, headers=AUTH), 400,
                         "invalid_request")
    assert "did you mean 'limits'" in error["message"] and error["param"] == "limts"
    assert asyncio.run(store.list(include_revoked=True)) == []


async def test_update_a_key(client: TestClient, store: MemoryKeyStore) -> None:
    created = client.post("/admin/keys", json={"user": "u", "plan": "free",
                                               "features": ["chat"]}, headers=AUTH).json()
    path = f"/admin/keys/{created['id']}"
    changed = client.patch(path, json={"plan": "pro", "features": [], "models": ["gpt-4o"],
                                       "limits": {"tokens_per_day": 9}}, headers=AUTH)
    assert changed.status_code == 200, changed.text
    data = changed.json()
    assert (data["plan"], data["features"], data["models"], data["limits"]) == (
        "pro", [], ["gpt-4o"], {"tokens_per_day": 9})
    assert "key" not in data  # the secret is never shown again
    key = await store.verify(created["key"])
    assert key is not None and key.plan == "pro" and key.allows_feature("code_review")
    for body, param in (({"plan": "gld"}, "plan"), ({"plna": "pro"}, "plna"),
                        ({"user": "x"}, "user"), ({"limits": {"tokens_per_dya": 1}}, "limits"),
                        ({}, None)):
        error = assert_error(client.patch(path, json=body, headers=AUTH), 400,
                             "invalid_request")
        assert error["param"] == param
    hint = assert_error(client.patch(path, json={"plna": "pro"}, headers=AUTH), 400,
                        "invalid_request")
    assert "did you mean 'plan'" in hint["message"]
    typo = assert_error(client.patch(path, json={"models": ["gpt-4o-mni"]}, headers=AUTH),
                        400, "invalid_request")  # the same names as a creation
    assert "did you mean 'gpt-4o-mini'" in typo["message"] and typo["param"] == "models"
    assert_error(client.patch("/admin/keys/key_nope", json={"plan": "pro"}, headers=AUTH),
                 404, "not_found")
    client.delete(path, headers=AUTH)
    error = assert_error(client.patch(path, json={"plan": "free"}, headers=AUTH), 400,
                         "invalid_request")
    assert "revoked" in error["message"]


def test_body_over_cap_is_413(client: TestClient) -> None:
    big = b'{"user": "u", "plan": "free", "name": "' + b"n" * 10_000 + b'"}'
    assert_error(client.post("/admin/keys", content=big, headers=AUTH), 413,
                 "request_too_large")

    def chunks() -> Iterator[bytes]:  # no content-length: streamed, still capped
        yield b'{"user": "u", "plan": "free", "name": "'
        for _ in range(10):
            yield b"n" * 1000
        yield b'"}'

    assert_error(client.post("/admin/keys", content=chunks(), headers=AUTH), 413,
                 "request_too_large")


def test_any_plan_when_plans_not_given(store: MemoryKeyStore) -> None:
    app = Starlette(routes=admin_routes(store, ADMIN))
    with TestClient(app) as c:
        assert c.post("/admin/keys", json={"user": "u", "plan": "whatever"},
                      headers=AUTH).status_code == 201


def test_limits_validator_hook(store: MemoryKeyStore) -> None:
    from tallygate.errors import InvalidRequest

    def strict(limits: Any) -> None:
        if limits.get("tokens_per_day", 0) > 1000:
            raise InvalidRequest("tokens_per_day above the policy's ceiling", param="limits")

    app = Starlette(routes=admin_routes(store, ADMIN, validate_limits=strict))
    with TestClient(app) as c:
        body = {"user": "u", "plan": "p", "limits": {"tokens_per_day": 5000}}
        error = assert_error(c.post("/admin/keys", json=body, headers=AUTH), 400,
                             "invalid_request")
        assert "ceiling" in error["message"]


# --- the auth helpers the gateway routes call (gateway/auth.py) ---

from tallygate.errors import InvalidApiKey, PermissionDenied  # noqa: E402
from tallygate.gateway.auth import (  # noqa: E402
    check_permission,
    extract_secret,
    resolve_feature,
)


@pytest.mark.parametrize(("headers", "anthropic", "expected"), [
    ({"authorization": "Bearer tg-abc"}, False, "tg-abc"),
    ({"Authorization": "bearer   tg-abc  "}, False, "tg-abc"),
    ({"x-api-key": "tg-abc"}, False, None),  # x-api-key only on Anthropic routes
    ({"x-api-key": "tg-abc", "anthropic-version": "2023-06-01"}, True, "tg-abc"),
    ({"X-Api-Key": "tg-abc"}, True, "tg-abc"),
    ({"authorization": "Bearer tg-abc", "anthropic-version": "2099-01-01"}, True, "tg-abc"),
    ({"authorization": "Bearer tg-bearer", "x-api-key": "tg-x"}, True, "tg-x"),
    ({"authorization": "Basic dXNlcjpwYXNz"}, False, None),
    ({"authorization": "Bearer "}, False, None),
    ({"authorization": ""}, False, None),
    ({"x-api-key": "  "}, True, None),
    ({}, True, None),
])
def test_extract_secret(headers: dict[str, str], anthropic: bool, expected: str | None) -> None:
    assert extract_secret(headers, ("x-api-key",) if anthropic else ()) == expected


async def test_authenticate(store: MemoryKeyStore) -> None:
    key, secret = await store.create("u", "pro")
    assert await authenticate(store, {"x-api-key": secret}, ("x-api-key",)) == key
    assert await authenticate(store, {"authorization": f"Bearer {secret}"}) == key
    with pytest.raises(InvalidApiKey) as missing:
        await authenticate(store, {}, ("x-api-key",))
    assert "x-api-key" in missing.value.message
    with pytest.raises(InvalidApiKey):
        await authenticate(store, {"x-api-key": secret})
    wrong = secret[:-2] + "zz"
    with pytest.raises(InvalidApiKey) as bad:
        await authenticate(store, {"authorization": f"Bearer {wrong}"})
    assert wrong not in bad.value.message and wrong[3:20] not in bad.value.message
    assert bad.value.status == 401 and bad.value.code == "invalid_api_key"
    await store.revoke(key.id)
    with pytest.raises(InvalidApiKey):
        await authenticate(store, {"authorization": f"Bearer {secret}"})


async def test_check_permission(store: MemoryKeyStore) -> None:
    limited, _ = await store.create("u", "pro", features=["chat"], models=["gpt-4o*"])
    check_permission(limited, "chat", "gpt-4o-mini")
    check_permission(limited, "chat", None)
    for feature, model, param in (("summarize", "gpt-4o", "feature"),
                                  ("chat", "claude-opus-4-1", "model"),
                                  (None, "gpt-4o", "feature")):
        with pytest.raises(PermissionDenied) as denied:
            check_permission(limited, feature, model)
        assert denied.value.status == 403 and denied.value.code == "permission_denied"
        assert denied.value.param == param
    open_key, _ = await store.create("u", "pro")
    check_permission(open_key, None, "anything")
    check_permission(open_key, "any-feature", "any-model")
    assert resolve_feature(limited, None) == "chat"
    assert resolve_feature(limited, "summarize") == "summarize"
    assert resolve_feature(open_key, None) is None


async def test_expiry_and_rotation_through_the_api(client: TestClient,
                                                   store: MemoryKeyStore) -> None:
    import time

    soon = int(time.time()) + 600
    created = client.post("/admin/keys", json={"user": "u", "plan": "free",
                                               "expires_at": soon}, headers=AUTH).json()
    assert created["expires_at"] == soon
    path = f"/admin/keys/{created['id']}"
    for bad in (int(time.time()) - 1, "tomorrow", True):
        error = assert_error(client.patch(path, json={"expires_at": bad}, headers=AUTH), 400,
                             "invalid_request")
        assert error["param"] == "expires_at"
    assert client.patch(path, json={"expires_at": None}, headers=AUTH).json()[
        "expires_at"] is None
    rotated = client.post(path + "/rotate", headers=AUTH)
    assert rotated.status_code == 200, rotated.text
    data = rotated.json()
    assert data["id"] == created["id"] and data["key"] != created["key"]
    assert await store.verify(created["key"]) is None
    assert (await store.verify(data["key"])).id == created["id"]  # type: ignore[union-attr]
    assert_error(client.post("/admin/keys/key_nope/rotate", headers=AUTH), 404, "not_found")
    assert_error(client.post(path + "/rotate"), 401, "invalid_api_key")
    client.delete(path, headers=AUTH)
    error = assert_error(client.post(path + "/rotate", headers=AUTH), 400, "invalid_request")
    assert "revoked" in error["message"]
