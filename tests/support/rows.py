"""Ledger rows the report tests (and the CLI's) read: a day of chat and a coding run."""

from __future__ import annotations

from datetime import UTC, datetime

from tallygate.types import CallRecord, Outcome

T0 = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
DAY2 = T0 + 86400


def _chat(rid: str, i: int, **kw) -> CallRecord:
    base = dict(request_id=rid, ts=T0 + 3600 * i, outcome=Outcome.OK, status=200,
                feature="chat", model_requested="gpt-4o", model_used="gpt-4o")
    base.update(kw)
    return CallRecord(**base)


def _code(rid: str, i: int, run: str, step: str, attempt: int | None, model: str,
          inp: int, out: int, cost: int, lat: int, **kw) -> CallRecord:
    return CallRecord(
        request_id=rid, ts=DAY2 + 60 * i, outcome=Outcome.OK, status=200, feature="code",
        user="dave" if run == "R1" else None, run=run, step=step, step_attempt=attempt,
        model_requested=model, model_used=model, input_tokens=inp, output_tokens=out,
        cost_nusd=cost, latency_ms=lat, **kw,
    )


ROWS = [
    _chat("r1", 0, user="alice", input_tokens=1000, output_tokens=200, cached_tokens=400,
          cost_nusd=5000, latency_ms=100),
    _chat("r2", 1, user="bob", outcome=Outcome.TRIMMED, input_tokens=500, output_tokens=100,
          cost_nusd=2500, latency_ms=300, trimmed_tokens=250),
    _chat("r3", 2, user="bob", outcome=Outcome.REJECTED, status=429, model_used=None,
          error_code="budget_exceeded"),
    _chat("r4", 3, user="alice", outcome=Outcome.CACHED, latency_ms=5, tokens_saved=1200),
    CallRecord(request_id="r5", ts=T0 + 4 * 3600, outcome=Outcome.OK, status=200,
               feature="summarize", user="carol", model_requested="gpt-4o-mini",
               model_used="gpt-4o-mini", input_tokens=2000, output_tokens=100, cost_nusd=360,
               latency_ms=200, exact=False),
    _code("r6", 0, "R1", "planning", None, "opus", 3000, 1000, 120000, 2000),
    _code("r7", 1, "R1", "execution", None, "sonnet", 5000, 2000, 45000, 1500),
    _code("r8", 2, "R1", "review", 1, "sonnet", 4000, 500, 19500, 800, cached_tokens=1000),
    _code("r9", 3, "R1", "review", 2, "sonnet", 4500, 300, 18000, 700),
    _code("r10", 4, "R1", "verification", None, "haiku", 2000, 100, 2500, 400),
    _code("r11", 5, "R2", "planning", None, "opus", 1000, 500, 52500, 1000),
    _code("r12", 6, "R2", "review", 1, "sonnet", 1000, 100, 4500, 600),
    _code("r13", 7, "R2", "review", 2, "sonnet", 1100, 100, 4800, 650),
    _code("r14", 8, "R2", "review", 3, "sonnet", 1200, 100, 5100, 620),
    _code("r15", 9, "R2", "verification", None, "haiku", 1500, 50, 1700, 300),
]



def _shared(rid: str, i: int, user: str | None, key: str | None, tokens: int) -> CallRecord:
    return CallRecord(request_id=rid, ts=DAY2 + 3600 + 60 * i, outcome=Outcome.OK, status=200,
                      feature="code", user=user, key_id=key, run="shared-id", step="edit",
                      step_attempt=1 + i % 2, model_requested="sonnet", model_used="sonnet",
                      input_tokens=tokens, output_tokens=5, cost_nusd=tokens * 10)


# One run id, three owners: alice's two calls (two keys of hers: one run), bob's one, and
# one of a key without a user.
SHARED = [_shared("s1", 0, "alice", "k_a1", 10), _shared("s2", 1, "alice", "k_a2", 20),
          _shared("s3", 2, "bob", "k_b", 300), _shared("s4", 3, None, "k_svc", 4000)]
