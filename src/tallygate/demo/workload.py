"""The demo's scripted workload: a multi-agent coding workflow over a dozen tickets and a
chat feature used by free, pro and enterprise users. Pure and deterministic for a seed.

Every call has a start time as a fraction of the demo's duration (`at`, 0–1), so the same
script fits 3 seconds or 20; calls of one session (a ticket, a user's conversation) run
in order, each after the previous one finished."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Tickets: (title, specification quality). Under-specified tickets loop more in review.
TICKETS: tuple[tuple[str, str], ...] = (
    ("Add retry with back-off to the upload client", "clear"),
    ("Make the export faster", "vague"),
    ("Fix flaky test in the billing module", "clear"),
    ("Support SSO login", "vague"),
    ("Rename the settings page", "clear"),
    ("Improve error messages", "vague"),
    ("Paginate the audit log API", "clear"),
    ("Clean up the data pipeline", "vague"),
    ("Add a dark mode toggle", "partial"),
    ("Cache the pricing lookups", "partial"),
    ("Migrate the cron jobs to the queue", "partial"),
    ("Handle timezone edge cases in reports", "vague"),
)

# Extra review rounds (0–3) drawn per specification quality: vague tickets loop more.
LOOP_WEIGHTS: dict[str, tuple[int, int, int, int]] = {
    "clear": (6, 3, 1, 0),
    "partial": (2, 4, 3, 1),
    "vague": (0, 2, 4, 4),
}

# (input tokens low, high, max output tokens) per workflow step: planning reads the most
# context, execution writes the most code, verification is short.
STEP_SIZES: dict[str, tuple[int, int, int]] = {
    "planning": (5000, 9000, 1200),
    "execution": (3000, 5000, 2000),
    "review": (2000, 3500, 600),
    "verification": (1200, 2200, 250),
}

# Chat users: (user, plan, messages, protocol). `alice` is the free user who runs out.
CHAT_USERS: tuple[tuple[str, str, int, str], ...] = (
    ("alice", "free", 16, "openai"),
    ("bob", "free", 3, "openai"),
    ("carol", "pro", 10, "openai"),
    ("dave", "pro", 8, "anthropic"),
    ("erin", "enterprise", 10, "openai"),
    ("frank", "enterprise", 8, "anthropic"),
)

WORKFLOW_USER = "coding-agents"
WORKFLOW_PLAN = "enterprise"
CHAT_FEATURE = "chat"
WORKFLOW_FEATURE = "coding"
STEPS: tuple[str, ...] = ("planning", "execution", "review", "verification")


@dataclass(frozen=True, slots=True)
class Call:
    """One scripted LLM call."""

    at: float  # start, as a fraction of the demo's duration
    user: str
    feature: str
    protocol: str  # "openai" (chat completions) or "anthropic" (messages)
    model: str  # "auto" routes by step through the policy's tiers
    prompt_tokens: int  # size of the newest message (history is added by the session)
    max_tokens: int
    stream: bool = False
    run: str | None = None
    step: str | None = None
    attempt: int | None = None
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Session:
    """Calls that run one after the other (one ticket, or one user's conversation)."""

    name: str
    user: str
    plan: str
    calls: tuple[Call, ...]
    keeps_history: bool = False  # chat: every turn re-sends the conversation so far
    spec: str | None = None  # tickets: clear | partial | vague


@dataclass(frozen=True, slots=True)
class Workload:
    seed: int
    sessions: tuple[Session, ...] = field(default_factory=tuple)

    @property
    def total_calls(self) -> int:
        return sum(len(s.calls) for s in self.sessions)


def _step_call(rng: random.Random, at: float, run: str, step: str, attempt: int,
               grow: float = 1.0) -> Call:
    low, high, out = STEP_SIZES[step]
    return Call(
        at=round(at, 4), user=WORKFLOW_USER, feature=WORKFLOW_FEATURE, protocol="openai",
        model="auto", prompt_tokens=int(rng.randint(low, high) * grow), max_tokens=out,
        run=run, step=step, attempt=attempt, seed=rng.getrandbits(31),
    )


def ticket_session(rng: random.Random, index: int, title: str, spec: str) -> Session:
    """planning → execution → review (+ a fix and another review per extra loop) →
    verification; later review rounds carry the earlier feedback, so they grow."""
    run = f"TICKET-{index + 1}"
    loops = rng.choices(range(4), weights=LOOP_WEIGHTS[spec])[0]
    start = 0.02 + 0.55 * index / len(TICKETS)
    span = 0.4
    total = 4 + 2 * loops
    times = [start + span * i / total for i in range(total)]
    calls = [_step_call(rng, times[0], run, "planning", 1),
             _step_call(rng, times[1], run, "execution", 1),
             _step_call(rng, times[2], run, "review", 1)]
    for loop in range(1, loops + 1):
        calls.append(_step_call(rng, times[1 + 2 * loop], run, "execution", loop + 1))
        calls.append(_step_call(rng, times[2 + 2 * loop], run, "review", loop + 1,
                                grow=1 + 0.25 * loop))
    calls.append(_step_call(rng, times[-1], run, "verification", 1))
    return Session(run, WORKFLOW_USER, WORKFLOW_PLAN, tuple(calls), spec=spec)


def chat_session(rng: random.Random, user: str, plan: str, messages: int,
                 protocol: str) -> Session:
    """One user's conversation spread over the whole demo; pro and enterprise users stream.
    Claude models answer the users on the Anthropic route."""
    model = "claude-haiku-4-5" if protocol == "anthropic" else "gpt-4o-mini"
    start = rng.uniform(0.0, 0.1)
    calls = tuple(
        Call(
            at=round(start + (0.88 - start) * i / messages, 4), user=user,
            feature=CHAT_FEATURE, protocol=protocol, model=model,
            prompt_tokens=rng.randint(120, 700), max_tokens=rng.choice((300, 500, 800)),
            stream=plan != "free", seed=rng.getrandbits(31),
        )
        for i in range(messages)
    )
    return Session(f"chat:{user}", user, plan, calls, keeps_history=True)


def build_workload(seed: int = 7) -> Workload:
    """The whole script: 12 tickets and 6 chat users (about 150 calls)."""
    rng = random.Random(seed)
    tickets = [ticket_session(rng, i, title, spec) for i, (title, spec) in enumerate(TICKETS)]
    chats = [chat_session(rng, *user) for user in CHAT_USERS]
    return Workload(seed, tuple(tickets + chats))


def ticket_title(run: str) -> str:
    index = int(run.rsplit("-", 1)[1]) - 1
    return TICKETS[index][0]
