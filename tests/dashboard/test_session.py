"""Session cookies and CSRF tokens: signed, expiring, bound to the keys that issued them."""

from __future__ import annotations

import hmac

import pytest

from tallygate.dashboard.session import Sessions, safe_next


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_roles_and_round_trip() -> None:
    s = Sessions("adm", "view")
    assert (s.role_of("adm"), s.role_of("view"), s.role_of("ad"), s.role_of("")) == (
        "admin", "viewer", None, None)
    assert s.role_of("x" * 5000) is None
    for role in ("admin", "viewer"):
        cookie, session = s.issue(role)  # type: ignore[arg-type]
        read = s.read(cookie)
        assert read == session and read.can_change == (role == "admin")


def test_expiry_and_key_changes_end_sessions() -> None:
    clock = Clock()
    s = Sessions("adm", "view", hours=1, clock=clock)
    admin, _ = s.issue("admin")
    viewer, _ = s.issue("viewer")
    assert Sessions("adm", "view2", clock=clock).read(admin) is not None
    assert Sessions("adm", "view2", clock=clock).read(viewer) is None  # new viewer key
    assert Sessions("adm", None, clock=clock).read(viewer) is None  # viewer key removed
    assert Sessions("adm2", "view", clock=clock).read(admin) is None  # new admin key
    clock.now += 3601
    assert s.read(admin) is None and s.read(viewer) is None


def test_csrf_is_bound_to_the_session() -> None:
    s = Sessions("adm")
    _, one = s.issue("admin")
    _, two = s.issue("admin")
    assert s.csrf_ok(one, s.csrf(one)) and not s.csrf_ok(two, s.csrf(one))
    assert not s.csrf_ok(one, None) and not s.csrf_ok(one, "")


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    s = Sessions("adm", "view")
    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert s.role_of("guess") is None
    assert len(seen) == 2 and all(len(a) == len(b) == 32 for a, b in seen)  # both digests


@pytest.mark.parametrize(("target", "expected"), [
    (None, "/dashboard"), ("", "/dashboard"), ("/dashboard/keys", "/dashboard/keys"),
    ("https://evil.example", "/dashboard"), ("//evil.example", "/dashboard"),
    ("/dashboard\\x", "/dashboard"), ("/dashboard\nSet-Cookie: x", "/dashboard"),
    ("/admin/keys", "/dashboard"),
])
def test_safe_next(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected
