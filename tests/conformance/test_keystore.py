"""One suite over every key store: memory, SQLite and a real PostgreSQL server
(a fresh database per test)."""

from __future__ import annotations

import asyncio
import hmac
import multiprocessing
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from tallygate.errors import ConfigError, InvalidRequest
from tallygate.keys import KeyStore, open_keystore
from tallygate.keys.model import hash_secret

BACKENDS = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture
def fresh_pg(request: pytest.FixtureRequest) -> Iterator[str]:
    base: str = request.getfixturevalue("postgres_url")
    name = "tg_keys_" + uuid.uuid4().hex[:12]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield base.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keys.db'}"
    return str(request.getfixturevalue("fresh_pg"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[KeyStore]:
    opened = await open_keystore(store_url)
    yield opened
    await opened.close()


async def test_create_then_verify(store: KeyStore) -> None:
    key, secret = await store.create(
        "u1", "pro", name="ci", features=["chat"], models=["gpt-4o"],
        limits={"tokens_per_day": 50000, "requests_per_minute": 60},
    )
    assert secret.startswith("tg-") and len(secret) >= 43
    assert key.id.startswith("key_") and secret not in key.id
    found = await store.verify(secret)
    assert found == key
    assert found is not None
    assert (found.user, found.plan, found.name) == ("u1", "pro", "ci")
    assert found.features == ("chat",) and found.models == ("gpt-4o",)
    assert found.limits == {"tokens_per_day": 50000, "requests_per_minute": 60}
    assert found.revoked_at is None and found.created_at > 0


async def test_wrong_secrets_fail(store: KeyStore) -> None:
    _, secret = await store.create("u1", "free")
    assert await store.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert await store.verify("tg-" + "x" * 40) is None
    assert await store.verify("") is None
    assert await store.verify("sk-" + secret[3:]) is None
    assert await store.verify("tg-" + "y" * 100_000) is None


async def test_secrets_unique(store: KeyStore) -> None:
    made = [await store.create("u", "free") for _ in range(20)]
    assert len({s for _, s in made}) == 20
    assert len({k.id for k, _ in made}) == 20


async def test_list_get_revoke(store: KeyStore) -> None:
    a, secret_a = await store.create("alice", "free")
    b, _ = await store.create("bob", "pro")
    assert {k.id for k in await store.list()} == {a.id, b.id}
    assert await store.get(a.id) == a
    assert await store.get("key_missing") is None

    assert await store.revoke(a.id) is True
    assert await store.verify(secret_a) is None
    assert [k.id for k in await store.list()] == [b.id]
    listed = {k.id: k for k in await store.list(include_revoked=True)}
    assert set(listed) == {a.id, b.id}
    revoked_at = listed[a.id].revoked_at
    assert revoked_at is not None and not listed[a.id].active
    # revoking twice is fine and keeps the first time; unknown ids are False
    assert await store.revoke(a.id) is True
    again = await store.get(a.id)
    assert again is not None and again.revoked_at == revoked_at
    assert await store.revoke("key_missing") is False


async def test_allow_lists(store: KeyStore) -> None:
    _, secret = await store.create("u", "pro", features=["chat", "summarize"],
                                     models=["gpt-4o", "claude-*"])
    found = await store.verify(secret)
    assert found is not None
    assert found.allows_feature("chat") and found.allows_feature("summarize")
    assert not found.allows_feature("code_review")
    assert found.allows_model("gpt-4o") and found.allows_model("claude-haiku-4-5")
    assert not found.allows_model("gpt-4o-mini")
    open_key, _ = await store.create("u", "pro")
    assert open_key.allows_feature("anything") and open_key.allows_model("any-model")


async def test_constant_time_compare_is_used(store: KeyStore,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    _, secret = await store.create("u", "free")
    assert await store.verify(secret) is not None
    assert calls == [(hash_secret(secret).encode(), hash_secret(secret).encode())]


async def test_bad_create_arguments(store: KeyStore) -> None:
    for kwargs in ({"limits": {"tokens_per_day": -1}}, {"limits": {"bogus": 1}},
                   {"limits": {"tokens_per_day": 1.5}}, {"features": "chat"},
                   {"models": [""]}, {"name": ""}):
        with pytest.raises(InvalidRequest):
            await store.create("u", "free", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        await store.create("", "free")
    assert await store.list(include_revoked=True) == []


def test_unknown_scheme() -> None:
    with pytest.raises(ConfigError):
        asyncio.run(open_keystore("redis://127.0.0.1/0"))


# --- SQLite specifics: the secret never reaches the file; several processes share it ---


def _dir_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.iterdir()))


async def test_sqlite_file_never_holds_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    store = await open_keystore(f"sqlite:///{path}")
    secrets = [(await store.create("u", "free"))[1] for _ in range(5)]
    while_open = _dir_bytes(tmp_path)  # the db, -wal and -shm files as they are now
    await store.close()
    for raw in (while_open, _dir_bytes(tmp_path)):
        for secret in secrets:
            assert secret.encode() not in raw
            assert secret[3:].encode() not in raw
            assert hash_secret(secret).encode() in raw


async def test_postgres_never_holds_the_secret(fresh_pg: str) -> None:
    store = await open_keystore(fresh_pg)
    _, secret = await store.create("u", "free")
    await store.close()
    with psycopg.connect(fresh_pg) as conn:
        rows = conn.execute("SELECT tg_keys::text FROM tg_keys").fetchall()
    assert secret not in rows[0][0] and hash_secret(secret) in rows[0][0]


def _create_many(url: str, count: int) -> None:
    async def run() -> None:
        store = await open_keystore(url)
        for i in range(count):
            await store.create(f"user{i}", "free")
        await store.close()

    asyncio.run(run())


async def test_sqlite_shared_by_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_create_many, args=(url, 25)) for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    store = await open_keystore(url)
    other = await open_keystore(url)
    try:
        assert len(await store.list()) == 75
        key, secret = await store.create("x", "pro")
        assert await other.verify(secret) == key  # seen by another connection at once
        assert await store.revoke(key.id)
        assert await other.verify(secret) is None
    finally:
        await store.close()
        await other.close()


async def test_update_changes_plan_lists_and_limits(store: KeyStore) -> None:
    key, secret = await store.create("u", "free", name="ci", features=["chat"],
                                     limits={"tokens_per_day": 10})
    updated = await store.update(key.id, plan="pro", features=[], models=["gpt-4o*"],
                                 limits={"tokens_per_day": 500, "cost_usd_per_day": 2.5})
    assert updated is not None
    assert (updated.id, updated.user, updated.name, updated.created_at) == (
        key.id, "u", "ci", key.created_at)
    assert updated.plan == "pro" and updated.features == () and updated.models == ("gpt-4o*",)
    assert updated.limits == {"tokens_per_day": 500, "cost_usd_per_day": 2.5}
    assert await store.get(key.id) == updated
    assert await store.verify(secret) == updated  # same secret, new settings
    renamed = await store.update(key.id, name=None, limits={})
    assert renamed is not None and renamed.name is None and renamed.limits == {}
    assert renamed.plan == "pro"  # fields not given stay


async def test_update_refuses_bad_values_unknown_and_revoked_keys(store: KeyStore) -> None:
    key, _ = await store.create("u", "free")
    for kwargs in ({"plan": ""}, {"limits": {"tokens_per_dya": 5}}, {"features": "chat"},
                   {"limits": {"tokens_per_day": -1}}, {"models": [""]}):
        with pytest.raises(InvalidRequest):
            await store.update(key.id, **kwargs)  # type: ignore[arg-type]
    assert await store.get(key.id) == key  # nothing changed
    assert await store.update("key_missing", plan="pro") is None
    await store.revoke(key.id)
    with pytest.raises(InvalidRequest, match="revoked"):
        await store.update(key.id, plan="pro")
    after = await store.get(key.id)
    assert after is not None and after.plan == "free"


async def test_a_key_expires_when_it_says(store: KeyStore) -> None:
    """Stored and read back on every backend; the store still returns an expired key
    (the gateway answers 401 key_expired, not "unknown"); an expiry must be ahead."""
    import time

    soon = int(time.time()) + 3600
    key, secret = await store.create("u1", "pro", expires_at=soon)
    found = await store.verify(secret)
    assert found is not None and found.expires_at == soon
    assert not found.expired(soon - 1) and found.expired(soon)
    assert (await store.get(key.id)).expires_at == soon  # type: ignore[union-attr]
    assert [k.expires_at for k in await store.list()] == [soon]
    for bad in (int(time.time()) - 5, True, "2027-01-01", 1.5, 2**60):
        with pytest.raises(InvalidRequest) as refused:
            await store.create("u2", "pro", expires_at=bad)
        assert refused.value.param == "expires_at"
    lasting = await store.update(key.id, expires_at=None)
    assert lasting is not None and lasting.expires_at is None
    assert (await store.verify(secret)).expires_at is None  # type: ignore[union-attr]
    later = await store.update(key.id, expires_at=soon + 60)
    assert later is not None and later.expires_at == soon + 60 and later.plan == "pro"
    with pytest.raises(InvalidRequest):
        await store.update(key.id, expires_at=int(time.time()) - 1)


async def test_rotate_gives_a_new_secret_and_refuses_the_old(store: KeyStore) -> None:
    key, old = await store.create("u1", "pro", features=["chat"],
                                  limits={"tokens_per_day": 500})
    rotated = await store.rotate(key.id)
    assert rotated is not None
    same, new = rotated
    assert new != old and new.startswith("tg-")
    assert same == key  # same id, user, plan, allow-lists and limits
    assert await store.verify(old) is None
    assert await store.verify(new) == key
    assert await store.rotate("key_nope") is None
    await store.revoke(key.id)
    with pytest.raises(InvalidRequest, match="revoked"):
        await store.rotate(key.id)
    assert await store.verify(new) is None


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres",
                                                           marks=pytest.mark.postgres)])
async def test_a_key_table_from_before_expiry_is_extended(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A tg_keys table written by a tallygate without expiry opens, keeps its keys, and
    takes expiries from then on (the column is added once, by whoever opens it first)."""
    store_url = (f"sqlite:///{tmp_path / 'keys.db'}" if kind == "sqlite"
                 else str(request.getfixturevalue("fresh_pg")))
    old = ("CREATE TABLE tg_keys (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, name TEXT,"
           " user_id TEXT NOT NULL, plan TEXT NOT NULL, features TEXT NOT NULL,"
           " models TEXT NOT NULL, limits TEXT NOT NULL, created_at BIGINT NOT NULL,"
           " revoked_at BIGINT)")
    row = ("key_0000000000000001", hash_secret("tg-" + "a" * 40), None, "u0", "free", "[]",
           "[]", "{}", 1_700_000_000, None)
    if store_url.startswith("sqlite"):
        import sqlite3

        db = sqlite3.connect(store_url[len("sqlite:///"):])
        db.execute(old)
        db.execute("INSERT INTO tg_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        db.commit()
        db.close()
    else:
        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute(old)
            conn.execute("INSERT INTO tg_keys VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                         row)
    first, second = await open_keystore(store_url), await open_keystore(store_url)
    try:
        kept = await second.verify("tg-" + "a" * 40)
        assert kept is not None and kept.user == "u0" and kept.expires_at is None
        key, _ = await first.create("u1", "free", expires_at=2_000_000_000)
        assert (await second.get(key.id)).expires_at == 2_000_000_000  # type: ignore[union-attr]
    finally:
        await first.close()
        await second.close()
