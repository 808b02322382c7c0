"""Alert rules (the policy's `alerts`, docs/observability.md), evaluated in a background
task, never on a call.

    cost_usd            spend over the rule's window (default hour) above `above` USD
    rejection_rate      rejected / calls over the window above `above` (a fraction)
    context_utilization one call's input tokens / its model's context window above `above`
    budget_used         used / limit of a limit in `scope` (user, feature, feature:chat …)
    runaway_context     a run's input per call past limits.run.max_input_per_call, or
                        growing past max_input_growth (core/runaway.py); also every call
                        the engine refused as runaway_context. Once per run per window.

Window figures come from the shared ledger (observe/figures.py), so the sums are across
replicas. `record(row)` only notes per-call facts in memory (bounded). A rule fires at
most once per window: the firing replica wins `store.claim("alert:<rule>:…:<bucket>")`,
which is atomic across replicas sharing the state store; then its webhook is queued
(observe/webhooks.py). A claim is taken before the POST: an alert is never sent twice,
and is lost only if the winning replica dies before delivering it."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from tallygate.config import Policy
from tallygate.config.models import Alert
from tallygate.core.catalog import Catalog
from tallygate.core.limits import Amounts, Identity, Rules, holds_for, parse_key
from tallygate.core.runaway import InputHistory, Judgement, Verdict
from tallygate.core.windows import bucket, bucket_bounds
from tallygate.errors import TallygateError
from tallygate.keys.base import KeyStore
from tallygate.observe.alert_log import AlertLog
from tallygate.observe.exhaustion import Exhaustion, Refusal
from tallygate.observe.figures import FiguresSource, WindowFigures
from tallygate.observe.slack import slack_message
from tallygate.observe.tasks import cancel_and_wait
from tallygate.observe.webhooks import Poster, WebhookSender
from tallygate.reports.budgets import key_limit_rules
from tallygate.state.base import StateStore
from tallygate.types import CallRecord, Hold, Outcome, Window
from tallygate.units import iso, usd_text

log = logging.getLogger("tallygate.alerts")

DEFAULT_WINDOW = Window.HOUR
MAX_PENDING_CALLS = 1000
MAX_SEEN_IDENTITIES = 10_000
_ZERO = Amounts(0, 0, 0)


def rule_id(rule: Alert) -> str:
    """Stable across replicas with the same policy: a digest of the rule's fields."""
    text = f"{rule.metric}|{rule.above}|{rule.window}|{rule.scope}|{rule.notify}"
    if rule.format != "json":  # (json rules keep the ids they had before formats)
        text += f"|{rule.format}"
    return f"{rule.metric}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


@dataclass(frozen=True, slots=True)
class _HotCall:
    """A call whose context utilisation passed a rule's threshold."""

    rule: int
    row: CallRecord
    window: int  # the model's context window


def _owner(row: CallRecord) -> str:
    return f"user.{row.user}" if row.user else f"key.{row.key_id}" if row.key_id else "-"


def _thread(row: CallRecord) -> str | None:
    """The runaway guard's thread of a row: its run (of its owner), else the conversation
    key the engine noted in its detail (engine `_runaway`), else None."""
    if row.run is not None:
        return f"{_owner(row)}:{row.run}"
    if not row.detail or '"conversation"' not in row.detail:  # no parse for most rows
        return None
    try:
        found = orjson.loads(row.detail).get("conversation")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return found if isinstance(found, str) else None


@dataclass(frozen=True, slots=True)
class _Runaway:
    """A call of a run (or a run-less conversation) the runaway-context guard objected to."""

    row: CallRecord
    thread: str
    judgement: Judgement | None  # None: the engine refused it (its row says so)




class AlertEngine:
    def __init__(
        self,
        rules: Sequence[Alert],
        store: StateStore,
        figures: FiguresSource,
        *,
        policy: Policy,
        catalog: Catalog,
        clock: Callable[[], float] = time.time,
        poster: Poster | None = None,
        interval: float = 5.0,
        sender: WebhookSender | None = None,
        keys: KeyStore | None = None,
        log: AlertLog | None = None,
    ) -> None:
        self.rules = tuple(rules)
        self.ids = tuple(rule_id(r) for r in self.rules)
        self.store = store
        self.figures = figures
        self.policy = policy
        self.catalog = catalog
        self.clock = clock
        self.interval = interval
        self.sender = sender or WebhookSender(poster)
        self.keys = keys  # for virtual keys' own limits (budget_used)
        self.log = log  # where fired payloads are kept for the dashboard
        self.fired: list[dict[str, Any]] = []  # payloads this process fired (newest last)
        self._context_rules = [i for i, r in enumerate(self.rules)
                               if r.metric == "context_utilization"]
        self._budget_rules = [i for i, r in enumerate(self.rules) if r.metric == "budget_used"]
        self._runaway_rules = [i for i, r in enumerate(self.rules)
                               if r.metric == "runaway_context"]
        self._exhausted_rules = [i for i, r in enumerate(self.rules)
                                 if r.metric == "budget_exhausted"]
        self._reset_rules = [i for i, r in enumerate(self.rules) if r.metric == "budget_reset"]
        self._exhaustion = (Exhaustion() if self._exhausted_rules or self._reset_rules
                            else None)
        guard = policy.limits.run.runaway
        self._inputs = InputHistory(guard) if guard and self._runaway_rules else None
        self._runaways: deque[_Runaway] = deque(maxlen=MAX_PENDING_CALLS)
        self._hot: deque[_HotCall] = deque(maxlen=MAX_PENDING_CALLS)
        self._seen: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        self._windows: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ hot path

    def record(self, row: CallRecord) -> None:
        """O(1), in memory: note what the next evaluation needs from this call."""
        if self._context_rules and row.input_tokens and row.model_used:
            window = self._context_window(row.model_used)
            for i in self._context_rules:
                if window and row.input_tokens > self.rules[i].threshold * window:
                    self._hot.append(_HotCall(i, row, window))
        if self._runaway_rules:
            self._note_runaway(row)
        if self._exhaustion is not None:
            self._exhaustion.note(row)
        if self._budget_rules and row.outcome is not Outcome.REJECTED:
            ident = (row.key_id, row.user, row.plan, row.run, row.feature, row.model_used)
            self._seen[ident] = None
            if len(self._seen) > MAX_SEEN_IDENTITIES:
                self._seen.popitem(last=False)

    def _note_runaway(self, row: CallRecord) -> None:
        thread = _thread(row)
        if row.error_code == "runaway_context":  # judged (and refused) by the engine
            self._runaways.append(_Runaway(row, thread or f"{_owner(row)}:", None))
            return
        if (self._inputs is None or thread is None or not row.input_tokens
                or row.outcome is Outcome.REJECTED):
            return
        judgement = self._inputs.check(thread, row.input_tokens)
        if judgement.verdict is not Verdict.OK:
            self._runaways.append(_Runaway(row, thread, judgement))

    def _context_window(self, model: str) -> int:
        window = self._windows.get(model)
        if window is None:
            try:
                window = self.catalog.get(model).context_window
            except Exception:  # unknown model: no utilisation figure
                window = 0
            self._windows[model] = window
        return window

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.sender.start()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="tallygate-alerts")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self.sender.stop()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.evaluate(self.clock())
            except Exception:  # a store or ledger outage must not kill the loop
                log.exception("alert evaluation failed")

    # ------------------------------------------------------------------ evaluation

    async def evaluate(self, now: float) -> list[dict[str, Any]]:
        """Check every rule at `now`; returns the payloads fired by this call."""
        fired: list[dict[str, Any]] = []
        for i, rule in enumerate(self.rules):
            if rule.metric in ("cost_usd", "rejection_rate"):
                fired += await self._window_rule(i, rule, now)
        fired += await self._context_calls()
        fired += await self._runaway_calls()
        fired += await self._budgets(now)
        fired += await self._exhausted(now)
        for payload in fired:
            rule = self.rules[payload["rule"]["index"]]
            body = slack_message(payload) if rule.format == "slack" else payload
            self.sender.send(rule.notify, body)
        self.fired += fired
        if fired and self.log is not None:
            try:
                await self.log.append(fired, now=now)
            except TallygateError:  # the webhooks are queued: only the record is lost
                log.warning("alerts: cannot record fired alerts", exc_info=True)
        return fired

    async def _window_rule(self, i: int, rule: Alert, now: float) -> list[dict[str, Any]]:
        window = rule.window or DEFAULT_WINDOW
        current = bucket(window, now)
        out = []
        # The previous window too, until one evaluation period after it ended, so a
        # spike in its last seconds is not missed.
        for number in (current - 1, current):
            start, end = bucket_bounds(window, number)
            if number != current and now - end > 2 * self.interval:
                continue
            figures = await self.figures.window_figures(start, min(end, now + 1e-6))
            value = _value(rule, figures)
            if value is None or not value[0]:
                continue
            if await self._claim(i, f"{window.value}:{number}", end, now):
                out.append(self._payload(i, window, start, end, now, value[1], figures.top))
        return out

    async def _context_calls(self) -> list[dict[str, Any]]:
        out = []
        while self._hot:
            hot = self._hot.popleft()
            rule = self.rules[hot.rule]
            window = rule.window or DEFAULT_WINDOW
            number = bucket(window, hot.row.ts)
            start, end = bucket_bounds(window, number)
            if not await self._claim(hot.rule, f"{window.value}:{number}", end, hot.row.ts):
                continue
            row = hot.row
            figures = {
                "utilization": round(row.input_tokens / hot.window, 6),
                "threshold": str(rule.threshold), "input_tokens": row.input_tokens,
                "context_window": hot.window, "model": row.model_used,
                "request_id": row.request_id, "ts": row.ts,
            }
            top = {"feature": [{"feature": row.feature}], "user": [{"user": row.user}],
                   "step": [{"step": row.step}]}
            out.append(self._payload(hot.rule, window, start, end, hot.row.ts, figures, top))
        return out

    async def _runaway_calls(self) -> list[dict[str, Any]]:
        out = []
        while self._runaways:
            hot = self._runaways.popleft()
            row = hot.row
            digest = hashlib.sha256(hot.thread.encode("utf-8", "surrogateescape"))
            for i in self._runaway_rules:
                window = self.rules[i].window or DEFAULT_WINDOW
                number = bucket(window, row.ts)
                start, end = bucket_bounds(window, number)
                suffix = f"{digest.hexdigest()[:16]}:{window.value}:{number}"
                if not await self._claim(i, suffix, end, row.ts):
                    continue
                conversation = _thread(row) if row.run is None else None
                figures = {"run": row.run, "conversation": conversation,
                           "user": row.user, "key_id": row.key_id,
                           "feature": row.feature, "step": row.step,
                           "request_id": row.request_id, "ts": row.ts,
                           "refused": hot.judgement is None
                           or hot.judgement.verdict is Verdict.REFUSE}
                if hot.judgement is not None:
                    figures.update(hot.judgement.figures())
                else:
                    figures.update({"input_tokens": row.input_tokens, "detail": row.detail})
                top = ({"run": [{"run": row.run, "user": row.user}]} if conversation is None
                       else {"conversation": [{"conversation": conversation,
                                               "user": row.user}]})
                out.append(self._payload(i, window, start, end, row.ts, figures, top))
        return out

    async def _budgets(self, now: float) -> list[dict[str, Any]]:
        if not self._budget_rules or not self._seen:
            self._seen.clear()
            return []
        seen, self._seen = self._seen, OrderedDict()
        own = await self._own_limits({ident[0] for ident in seen if ident[0]})
        holds: dict[str, Hold] = {}
        for key_id, user, plan, run, feature, model in seen:
            ident = Identity(key_id, user, plan, run, own.get(key_id))
            for h in holds_for(self.policy.limit_index, ident, feature=feature, model=model or "",
                               amounts=_ZERO):
                holds.setdefault(h.key, h)
        out = []
        for hold in holds.values():
            rules = [i for i in self._budget_rules if _in_scope(self.rules[i].scope, hold.key)]
            if not rules or hold.limit <= 0:
                continue
            usage = await self.store.usage(hold.key, limit=hold.limit, window=hold.window,
                                           rolling=hold.rolling, now=now)
            for i in rules:
                out += await self._budget_hit(i, hold, usage.used, usage.reset_at, now)
        return out

    async def _exhausted(self, now: float) -> list[dict[str, Any]]:
        """`budget_exhausted` on a limit's first refusal in a window; `budget_reset` once
        that window has ended (observe/exhaustion.py)."""
        if self._exhaustion is None:
            return []
        out = []
        for refusal in self._exhaustion.refusals():
            # a lifetime budget: once per run while it lives, as budget_used
            until = (now + self.policy.storage.run_ttl if math.isinf(refusal.end)
                     else refusal.end)
            for i in self._exhausted_rules:
                if _in_scope(self.rules[i].scope, refusal.key) and await self._claim(
                        i, f"{refusal.key}:{refusal.number}", until, now):
                    out.append(self._limit_payload(i, refusal, refusal.start, refusal.end,
                                                   now, {"request_id": refusal.request_id}))
            if any(_in_scope(self.rules[i].scope, refusal.key) for i in self._reset_rules):
                self._exhaustion.await_reset(refusal)
        for refusal in self._exhaustion.resets_due(now):
            start, end = bucket_bounds(refusal.limit.window, refusal.number + 1)
            for i in self._reset_rules:
                if _in_scope(self.rules[i].scope, refusal.key) and await self._claim(
                        i, f"{refusal.key}:{refusal.number}", end, now):
                    out.append(self._limit_payload(i, refusal, start, end, now, {
                        "used_up_from": iso(refusal.start), "used_up_until": iso(refusal.end)}))
        return out

    def _limit_payload(self, i: int, refusal: Refusal, start: float, end: float, now: float,
                       more: dict[str, Any]) -> dict[str, Any]:
        limit = refusal.limit
        figures = {"limit_key": refusal.key, "scope": limit.scope, "id": limit.ident,
                   "metric": limit.metric.value, "window": limit.window.value,
                   "rolling": limit.rolling, "user": refusal.user, **more}
        top = {limit.scope: [{limit.scope: limit.ident}]}
        return self._payload(i, limit.window, start, end, now, figures, top)

    async def _own_limits(self, key_ids: set[str]) -> dict[str | None, Rules | None]:
        """Each key's own limits (once per evaluation, off the request path); a key that
        cannot be read counts with the policy's `limits.key` alone."""
        out: dict[str | None, Rules | None] = {}
        if self.keys is None:
            return out
        for key_id in key_ids:
            try:
                key = await self.keys.get(key_id)
            except Exception:  # a ledger outage: the policy's key limits still apply
                log.warning("alerts: cannot read key %s's own limits", key_id, exc_info=True)
                continue
            if key is not None:
                out[key_id] = key_limit_rules(key)
        return out

    async def _budget_hit(self, i: int, hold: Hold, used: int, reset_at: float,
                          now: float) -> list[dict[str, Any]]:
        rule = self.rules[i]
        if used <= rule.threshold * hold.limit:
            return []
        number = bucket(hold.window, now)
        start, end = bucket_bounds(hold.window, number)
        until = max(end, reset_at)
        if hold.window is Window.RUN:  # a lifetime budget: once per run (while it lives)
            until = now + self.policy.storage.run_ttl
        if not await self._claim(i, f"{hold.key}:{number}", until, now):
            return []
        parsed = parse_key(hold.key)
        figures = {"limit_key": hold.key, "scope": parsed.scope, "id": parsed.ident,
                   "metric": hold.metric.value, "used": used, "limit": hold.limit,
                   "used_fraction": round(used / hold.limit, 6),
                   "threshold": str(rule.threshold)}
        top = {parsed.scope: [{parsed.scope: parsed.ident, "used": used}]}
        return [self._payload(i, hold.window, start, end, now, figures, top)]

    async def _claim(self, i: int, suffix: str, end: float, now: float) -> bool:
        ttl = max(1.0, end - now) + 3600.0  # outlive the window: one firing per window
        return await self.store.claim(f"alert:{self.ids[i]}:{suffix}", ttl, now=now)

    def _payload(self, i: int, window: Window, start: float, end: float, now: float,
                 figures: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
        rule = self.rules[i]
        return {
            "source": "tallygate",
            "rule": {"id": self.ids[i], "index": i, "metric": rule.metric,
                     "above": None if rule.above is None else str(rule.above),
                     "window": rule.window and rule.window.value, "scope": rule.scope},
            # (a lifetime window has neither start nor end: null)
            "window": {"name": window.value,
                       "start": None if math.isinf(start) else iso(start),
                       "end": None if math.isinf(end) else iso(end),
                       "start_ts": None if math.isinf(start) else start,
                       "end_ts": None if math.isinf(end) else end},
            "fired_at": iso(now),
            "figures": figures,
            "top_contributors": top,
        }


def _value(rule: Alert, figures: WindowFigures) -> tuple[bool, dict[str, Any]] | None:
    """(passed the threshold, figures) of a window rule."""
    if rule.metric == "cost_usd":
        threshold = rule.above_nusd
        return figures.cost_nusd > threshold, {
            "cost_usd": usd_text(figures.cost_nusd), "cost_nusd": figures.cost_nusd,
            "threshold_usd": usd_text(threshold), "calls": figures.calls,
            "tokens": figures.tokens}
    if not figures.calls:
        return None
    rate = Decimal(figures.rejected) / figures.calls
    return rate > rule.threshold, {
        "rejection_rate": round(float(rate), 6), "rejected": figures.rejected,
        "calls": figures.calls, "threshold": str(rule.threshold)}


def _in_scope(scope: str | None, key: str) -> bool:
    """`user` matches every user:… key; `feature:chat` only that feature's keys."""
    if scope is None:
        return True
    parsed = parse_key(key)
    kind, _, ident = scope.partition(":")
    return parsed.scope == kind and (not ident or parsed.ident == ident)
