"""The runaway-context guard: does a run's (or a conversation's) input keep growing past
what the policy allows? Pure: sizes and time are passed in.

A loop that re-sends its whole, ever longer history is how a weekend bill goes from
$3,000 to $150,000: each call carries more input than the last, so the cost of the run
grows with the square of its length. Two rules, from `limits.run` (docs/policy.md):

- size: one call's input above `max_input_per_call` tokens;
- growth: over the thread's last `growth_calls` calls (this one included) every call
  carried more input than the one before, and this one more than `max_input_growth` times
  the first of them. A coding agent whose context creeps up a few percent a turn stays
  under 1.5× over 4 calls; a loop that doubles its context every turn does not.

Either one says ALERT, or REFUSE when `on_runaway: refuse`. A thread is a run id (scoped
to its owner, as the run's hold keys are) or, without one, a conversation key the caller
derives (`conversation_key`: the owner and the conversation's opening messages).

Where the history lives: in each process's memory (`InputHistory`, bounded: at most
`max_threads` threads of `growth_calls` sizes each, least recently used dropped). No
store trip per call: the size rule needs no history at all, and the growth rule still
fires when a run's calls are spread over several replicas, since every subsequence of a
growing series grows too (each replica sees it a few calls later). The hard stop that is
exact across replicas is the run's lifetime budget (`tokens_per_run`, in the state store).
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

import orjson

from tallygate.errors import RunawayContext

DEFAULT_GROWTH_CALLS = 4
MAX_THREADS = 10_000


class Verdict(StrEnum):
    OK = "ok"
    ALERT = "alert"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class RunawayPolicy:
    """`limits.run.max_input_per_call`, `max_input_growth`, `growth_calls`, `on_runaway`."""

    max_input_per_call: int | None = None
    max_input_growth: Decimal | None = None
    growth_calls: int = DEFAULT_GROWTH_CALLS
    refuse: bool = False  # on_runaway: refuse (else alert only)

    def __post_init__(self) -> None:
        if self.growth_calls < 2:
            raise ValueError("growth_calls must be at least 2")


@dataclass(frozen=True, slots=True)
class Judgement:
    """What the guard says about one call, with the figures an alert or a refusal shows."""

    verdict: Verdict
    rule: str | None = None  # "size" | "growth"
    input_tokens: int = 0
    limit: int | Decimal | None = None  # max_input_per_call, or max_input_growth
    recent: tuple[int, ...] = ()  # the inputs the growth rule looked at, oldest first
    growth: Decimal | None = None  # newest / oldest of `recent`

    def figures(self) -> dict[str, Any]:
        return {
            "rule": self.rule, "input_tokens": self.input_tokens,
            "limit": None if self.limit is None else str(self.limit),
            "recent_inputs": list(self.recent),
            "growth": None if self.growth is None else str(self.growth),
        }


    def error(self, run: str | None, *, conversation: str | None = None) -> RunawayContext:
        """The refusal to raise for a REFUSE verdict (400 runaway_context); a run-less
        call's `conversation` key rides along for its ledger row (error details are not
        part of the protocol's error body)."""
        where = f"run {run!r}" if run else "this conversation"
        if self.rule == "size":
            why = (f"its input of {self.input_tokens} tokens is over "
                   f"limits.run.max_input_per_call ({self.limit})")
        else:
            sizes = ", ".join(str(n) for n in self.recent)
            why = (f"its input kept growing ({sizes} tokens: {self.growth}×, over "
                   f"limits.run.max_input_growth {self.limit})")
        return RunawayContext(
            f"Refused a call of {where}: {why}. Summarise or trim the context, or start a "
            "new run", param="messages", limit_key="limits.run", requested=self.input_tokens,
            limit=int(self.limit or 0) if self.rule == "size" else 0, run=run,
            rule=self.rule, recent_inputs=list(self.recent),
            growth=None if self.growth is None else str(self.growth),
            threshold=None if self.limit is None else str(self.limit),
            conversation=conversation)


OK = Judgement(Verdict.OK)


def judge(previous: Sequence[int], input_tokens: int, policy: RunawayPolicy) -> Judgement:
    """The verdict on a call of `input_tokens`, given the thread's earlier inputs (oldest
    first; only the last `growth_calls - 1` matter)."""
    bad = Verdict.REFUSE if policy.refuse else Verdict.ALERT
    cap = policy.max_input_per_call
    if cap is not None and input_tokens > cap:
        return Judgement(bad, "size", input_tokens, cap)
    factor = policy.max_input_growth
    want = policy.growth_calls - 1
    if factor is None or len(previous) < want:
        return OK
    recent = (*tuple(previous)[len(previous) - want:], input_tokens)  # (a deque won't slice)
    if any(b <= a for a, b in itertools.pairwise(recent)) or recent[0] <= 0:
        return OK
    growth = Decimal(input_tokens) / recent[0]
    if growth <= factor:
        return OK
    return Judgement(bad, "growth", input_tokens, factor, recent,
                     growth.quantize(Decimal("0.001")))


class InputHistory:
    """The last input sizes per thread, in this process (bounded, least recently used
    threads dropped). `check` judges a call and, unless refused, remembers it."""

    __slots__ = ("_keep", "_max_threads", "_threads", "policy")

    def __init__(self, policy: RunawayPolicy, *, max_threads: int = MAX_THREADS) -> None:
        self.policy = policy
        self._keep = policy.growth_calls - 1
        self._max_threads = max_threads
        self._threads: OrderedDict[str, deque[int]] = OrderedDict()

    def check(self, thread: str, input_tokens: int) -> Judgement:
        found = self._threads.get(thread)
        verdict = judge(found or (), input_tokens, self.policy)
        if verdict.verdict is not Verdict.REFUSE:  # a refused call was never sent
            self.remember(thread, input_tokens)
        return verdict

    def remember(self, thread: str, input_tokens: int) -> None:
        found = self._threads.get(thread)
        if found is None:
            found = self._threads[thread] = deque(maxlen=self._keep)
            if len(self._threads) > self._max_threads:
                self._threads.popitem(last=False)
        else:
            self._threads.move_to_end(thread)
        found.append(input_tokens)

    def __len__(self) -> int:
        return len(self._threads)


def conversation_key(owner: str, opening: Iterable[Any]) -> str:
    """A thread id for calls without a run: the owner (as in run hold keys) and a digest
    of the conversation's opening messages (a conversation re-sends them every turn)."""
    digest = hashlib.sha256(orjson.dumps(list(opening), option=orjson.OPT_SORT_KEYS))
    return f"conversation:{owner}:{digest.hexdigest()[:32]}"
