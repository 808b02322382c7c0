"""The connection defences `serve` runs the gateway with (gateway/guarded_http.py), on a
real uvicorn over raw sockets, with short deadlines: a silent connection and half a
request are closed in time, an oversized header gets 431, and past the connection cap
new connections get 503 while the first ones are still served."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tallygate.gateway.guarded_http import Guards
from tallygate.sim import SimServer
from tests.support.gateway import RunningGateway, running_gateway, sim_policy
from tests.support.policies import FEATURES, PLANS

GUARDS = Guards(header_timeout=0.5, body_timeout=0.5, idle_timeout=0.5, max_connections=3,
                max_header_bytes=8 * 1024)
SLACK = 1.5  # seconds beyond a deadline a close may take on a loaded 2-core machine


@pytest.fixture
def gw(sim: SimServer, tmp_path: Any) -> Iterator[RunningGateway]:
    policy = sim_policy(sim.url, str(tmp_path), features=FEATURES, plans=PLANS)
    with running_gateway(policy, guards=GUARDS) as running:
        yield running


def connect(gw: RunningGateway) -> socket.socket:
    host, port = gw.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.settimeout(10)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started = time.monotonic()
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - started


def response(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a content-length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), body


HEALTH = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def test_a_silent_connection_is_closed_at_the_header_deadline(gw: RunningGateway) -> None:
    with connect(gw) as sock:
        data, took = read_until_closed(sock)
    assert data == b"" and took < GUARDS.header_timeout + SLACK


def test_half_a_request_line_gets_408_and_is_closed(gw: RunningGateway) -> None:
    with connect(gw) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthoriz")
        data, took = read_until_closed(sock)
    assert took < GUARDS.header_timeout + SLACK
    assert data.startswith(b"HTTP/1.1 408 ")
    assert orjson.loads(data.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"


def test_half_a_body_gets_408_and_is_closed(gw: RunningGateway) -> None:
    key = gw.create_key("u", "pro").encode()  # the gateway checks the key first
    with connect(gw) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nx-api-key: " + key + b"\r\nContent-Length: 100\r\n\r\n{\"model\":")
        data, took = read_until_closed(sock)
    assert took < GUARDS.body_timeout + SLACK
    assert data.startswith(b"HTTP/1.1 408 ")
    body = orjson.loads(data.partition(b"\r\n\r\n")[2])
    assert body["type"] == "error"  # the Anthropic shape on /v1/messages


def test_an_idle_kept_alive_connection_is_closed(gw: RunningGateway) -> None:
    with connect(gw) as sock:
        sock.sendall(HEALTH)
        assert response(sock)[0] == 200
        data, took = read_until_closed(sock)
    assert data == b"" and took < GUARDS.idle_timeout + SLACK


def test_a_1_mib_header_gets_431(gw: RunningGateway) -> None:
    with connect(gw) as sock:
        # The server answers as soon as the cap is passed, then discards the rest.
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20))
        data, _ = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431 ")
    error = orjson.loads(data.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "request_header_fields_too_large"


def test_over_the_cap_gets_503_while_the_first_are_served(gw: RunningGateway) -> None:
    first = [connect(gw) for _ in range(GUARDS.max_connections)]
    try:
        for sock in first:
            sock.sendall(HEALTH)
            assert response(sock)[0] == 200
        with connect(gw) as extra:
            extra.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Length: 2\r\n\r\n{}")
            data, _ = read_until_closed(extra)
        assert data.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in data
        assert orjson.loads(data.partition(b"\r\n\r\n")[2])["error"]["code"] == "server_busy"
        for sock in first:  # still open, still served
            sock.sendall(HEALTH)
            assert response(sock)[0] == 200
    finally:
        for sock in first:
            sock.close()
    time.sleep(0.2)  # the closes reach the server; a new connection is admitted again
    with connect(gw) as again:
        again.sendall(HEALTH)
        assert response(again)[0] == 200


def test_past_twice_the_cap_is_closed_unanswered_and_logged_once(
        gw: RunningGateway, caplog: pytest.LogCaptureFixture) -> None:
    cap = GUARDS.max_connections
    held = [connect(gw) for _ in range(cap)]
    try:
        for sock in held:
            sock.sendall(HEALTH)
            assert response(sock)[0] == 200
        waiting = [connect(gw) for _ in range(cap)]  # between the cap and twice it: 503
        held += waiting
        with connect(gw) as far_over:  # past twice the cap: no descriptor kept, no answer
            data, took = read_until_closed(far_over)
        assert data == b"" and took < SLACK
        for sock in waiting:
            sock.sendall(HEALTH)
            assert read_until_closed(sock)[0].startswith(b"HTTP/1.1 503 ")
    finally:
        for sock in held:
            sock.close()
    busy = [r for r in caplog.records if "connection limit reached" in r.getMessage()]
    assert len(busy) == 1  # one line per 10 s, not one per refused connection
