"""`tallygate serve` stopped with a stream in flight: Ctrl-C once waits for the stream up
to the deadline then cuts it, Ctrl-C twice cuts it at once; either way the row holds the
tokens already relayed (never 0), the client gets the protocol's error event, and
nothing is printed but the shutdown log lines."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tallygate.sim import SimConfig, SimServer
from tests.support.gateway import running_sim
from tests.support.procs import serveable_policy, start_gateway


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[SimServer]:
    """A stream of 400 tokens at 40 tokens/s: ten seconds long."""
    with running_sim(SimConfig(tokens_per_second=40, reply_tokens=400)) as (server, _):
        yield server


class Reader(threading.Thread):
    """Reads a stream through the gateway, counting the text it got."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0,
                                    default_headers={"X-Tallygate-Feature": "chat"})
        self.text = ""
        self.error: BaseException | None = None
        self.started = threading.Event()

    def run(self) -> None:
        try:
            stream = self.client.chat.completions.create(
                model="gpt-4o-mini", stream=True,
                messages=[{"role": "user", "content": "Tell me a long story."}])
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    self.text += chunk.choices[0].delta.content
                    self.started.set()
        except BaseException as exc:  # the cut stream's error event
            self.error = exc


def _rows(policy: Path) -> list[dict]:  # type: ignore[type-arg]
    import sqlite3

    db = sqlite3.connect(str(policy.parent / "l.db"))
    db.row_factory = sqlite3.Row
    return [dict(r) for r in db.execute("SELECT * FROM calls")]


@pytest.mark.parametrize(("presses", "workers", "sig"),
                         [(1, 1, signal.SIGINT), (2, 1, signal.SIGINT), (1, 2, signal.SIGINT),
                          (1, 1, signal.SIGTERM), (2, 1, signal.SIGTERM)])
def test_ctrl_c_with_a_stream_in_flight(presses: int, workers: int, sig: signal.Signals,
                                        slow_sim: SimServer, tmp_path: Path) -> None:
    policy, key = serveable_policy(tmp_path, slow_sim, "1s")
    url, proc = start_gateway(policy, workers=workers)
    reader = Reader(url, key)
    reader.start()
    assert reader.started.wait(20)
    time.sleep(0.5)  # some tokens are relayed
    proc.send_signal(sig)
    began = time.monotonic()
    if presses == 2:
        time.sleep(0.2)
        proc.send_signal(sig)
    code = proc.wait(timeout=20)
    took = time.monotonic() - began
    out = proc.stdout.read().decode() if proc.stdout else ""
    reader.join(10)
    assert code == 0, out
    assert "Traceback" not in out and "CancelledError" not in out, out
    # What it waits for, said once by the process that has the stream.
    assert out.count("shutting down: waiting for 1 call(s) in flight (1 streaming)") == 1, out
    assert out.count("stopping now: cutting 1 call(s) in flight") == 1, out  # (the deadline)
    assert took < (1.5 if presses == 2 else 4.0)  # twice: at once; once: the 1 s deadline
    assert isinstance(reader.error, openai.APIError)  # the protocol's own error event
    assert reader.text and len(reader.text.split()) < 400
    [row] = _rows(policy)
    assert row["error_code"] == "shutdown" and row["stream"] == 1
    assert row["output_tokens"] >= len(reader.text.split())  # what was relayed, never 0
    assert row["input_tokens"] > 0


@pytest.fixture(scope="module")
def short_sim() -> Iterator[SimServer]:
    """A stream of 80 tokens at 40 tokens/s: two seconds long."""
    with running_sim(SimConfig(tokens_per_second=40, reply_tokens=80)) as (server, _):
        yield server


def test_sigterm_lets_a_stream_finish_within_the_deadline(short_sim: SimServer,
                                                          tmp_path: Path) -> None:
    policy, key = serveable_policy(tmp_path, short_sim, "15s")
    url, proc = start_gateway(policy)
    reader = Reader(url, key)
    reader.start()
    assert reader.started.wait(20)
    proc.send_signal(signal.SIGTERM)
    began = time.monotonic()
    code = proc.wait(timeout=20)
    took = time.monotonic() - began
    out = proc.stdout.read().decode() if proc.stdout else ""
    reader.join(10)
    assert code == 0, out
    assert "Traceback" not in out and "stopping now" not in out, out
    assert "shutting down: waiting for 1 call(s) in flight (1 streaming)" in out, out
    assert reader.error is None and len(reader.text.split()) == 80  # the whole answer
    assert took < 10  # it stopped when the stream ended, not at the deadline
    [row] = _rows(policy)
    assert (row["status"], row["error_code"], row["output_tokens"]) == (200, None, 80)
