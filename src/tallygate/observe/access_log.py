"""`tallygate serve --access-log FILE`: one JSON line per finished call, written as the
engine hands the row to its recorders (like the metrics), so the proxy needs no hook.

Fields: time (ISO 8601 UTC), request_id, key_id, feature, user, run, step, model (the
one used, else the one requested), status, outcome, input_tokens, output_tokens,
tokens, cost_usd (exact decimal string), ms. No prompt or completion text, no secret.
Each line is one `write(2)` on a file opened for appending, so several workers may
share the file."""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import IO

import orjson

from tallygate.types import NANO_PER_USD, CallRecord

STDOUT = "-"
log = logging.getLogger("tallygate.access")


def access_line(row: CallRecord) -> bytes:
    """The row as one JSON line (newline included)."""
    when = datetime.fromtimestamp(row.ts, UTC).isoformat(timespec="milliseconds")
    line = {
        "time": when.replace("+00:00", "Z"),
        "request_id": row.request_id,
        "key_id": row.key_id,
        "feature": row.feature,
        "user": row.user,
        "run": row.run,
        "step": row.step,
        "model": row.model_used or row.model_requested,
        "status": row.status,
        "outcome": str(row.outcome.value),
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "tokens": row.input_tokens + row.output_tokens,
        "cost_usd": str(Decimal(row.cost_nusd) / NANO_PER_USD),
        "ms": row.latency_ms,
    }
    return orjson.dumps(line) + b"\n"


class AccessLog:
    """A recorder (runtime.FanOut) writing `access_line(row)` for every finished call."""

    def __init__(self, target: str) -> None:
        self._own = target != STDOUT
        self._failed = False
        if self._own:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            self._out: IO[bytes] = os.fdopen(fd, "ab", buffering=0)
        else:
            self._out = sys.stdout.buffer

    def record(self, row: CallRecord) -> None:
        try:
            self._out.write(access_line(row))
            if not self._own:
                self._out.flush()
        except OSError as exc:  # a full disk must not fail the call; the ledger has it
            if not self._failed:
                self._failed = True
                log.warning("access log: cannot write (%s); lines are being dropped", exc)

    def close(self) -> None:
        if self._own:
            self._out.close()
