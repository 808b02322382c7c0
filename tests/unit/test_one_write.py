"""The guarded server's response transport: a fixed-length answer's head goes out with
its body in one write; a streamed head, a 100 Continue and everything else at once."""

from __future__ import annotations

from typing import Any

from tallygate.gateway.guarded_http import OneWriteTransport


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"


def wrap() -> tuple[OneWriteTransport, Recorder]:
    real = Recorder()
    transport: Any = real
    return OneWriteTransport(transport), real


def test_a_fixed_length_answer_is_one_write() -> None:
    one, real = wrap()
    one.write(HEAD)
    assert real.writes == []
    one.write(b"{}")
    assert real.writes == [HEAD + b"{}"]
    one.write(b"more")  # (anything after goes out as it comes)
    assert real.writes[-1] == b"more"


def test_streamed_heads_and_100_continue_go_out_at_once() -> None:
    one, real = wrap()
    one.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    one.write(chunked)
    assert real.writes == [b"HTTP/1.1 100 Continue\r\n\r\n", chunked]


def test_close_sends_a_held_head_first_and_the_rest_is_the_transports() -> None:
    one, real = wrap()
    one.write(HEAD)
    one.close()
    assert real.writes == [HEAD] and real.closed
    assert one.is_closing() is True
