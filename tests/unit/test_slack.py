"""Alerts as Slack messages: every metric reads as one line with its figures, and no name
a caller chose can mention, link or format in Slack."""

from __future__ import annotations

from typing import Any

import pytest

from tallygate.observe.slack import escape, slack_message

WINDOW = {"name": "hour", "start": "2027-01-15T08:00:00Z", "end": "2027-01-15T09:00:00Z",
          "start_ts": 1.0, "end_ts": 2.0}
LIFE = {"name": "run", "start": None, "end": None, "start_ts": None, "end_ts": None}


def payload(metric: str, figures: dict[str, Any], top: dict[str, Any] | None = None,
            window: dict[str, Any] = WINDOW) -> dict[str, Any]:
    return {"source": "tallygate", "rule": {"id": f"{metric}-0123456789", "index": 0,
                                            "metric": metric},
            "window": window, "fired_at": "2027-01-15T08:41:05Z", "figures": figures,
            "top_contributors": top or {}}


@pytest.mark.parametrize(("alert", "line"), [
    (payload("cost_usd", {"cost_usd": "51.2", "threshold_usd": "50", "calls": 1840,
                          "tokens": 9120000},
             {"feature": [{"feature": "code_review"}], "user": [{"user": "u1"}]}),
     "spend $51.2 this hour (from 2027-01-15T08:00:00Z) is past $50 (1,840 calls, "
     "9,120,000 tokens)"),
    (payload("rejection_rate", {"rejection_rate": 0.4, "rejected": 2, "calls": 5,
                                "threshold": "0.25"}),
     "40% of calls rejected this hour (from 2027-01-15T08:00:00Z), past 25% (2 of 5)"),
    (payload("context_utilization", {"utilization": 0.95, "input_tokens": 121600,
                                     "context_window": 128000, "model": "gpt-4o-mini",
                                     "request_id": "tg-1", "threshold": "0.9"}),
     "a call used 95% of gpt-4o-mini's context (121,600 of 128,000 tokens), past 90%; "
     "request tg-1"),
    (payload("budget_used", {"limit_key": "user:alice:tokens:day", "scope": "user",
                             "id": "alice", "metric": "tokens", "used": 850, "limit": 1000,
                             "used_fraction": 0.85, "threshold": "0.8"}),
     "user alice has used 85% of its tokens limit (850 of 1,000) this hour (from "
     "2027-01-15T08:00:00Z), past 80%"),
    (payload("budget_used", {"limit_key": "run:u1:T-1:tokens:run", "scope": "run",
                             "id": "T-1", "metric": "tokens", "used": 90, "limit": 100,
                             "used_fraction": 0.9, "threshold": "0.8"}, window=LIFE),
     "run T-1 has used 90% of its tokens limit (90 of 100) over the run's life, past 80%"),
    (payload("runaway_context", {"run": "T-9", "conversation": None, "user": "u1",
                                 "input_tokens": 120000, "rule": "size", "limit": 100000,
                                 "refused": True}),
     "run T-9 (user u1): a call of 120,000 input tokens broke the size rule (limit 100000); "
     "refused"),
    (payload("budget_exhausted", {"limit_key": "user:alice:tokens:day", "scope": "user",
                                  "id": "alice", "metric": "tokens", "window": "day",
                                  "rolling": False, "user": "alice", "request_id": "tg-9"}),
     "user alice's tokens per day limit is used up this hour (from 2027-01-15T08:00:00Z): "
     "calls are refused (first: tg-9)"),
    (payload("budget_reset", {"limit_key": "global:cost:month", "scope": "global",
                              "id": None, "metric": "cost", "window": "month",
                              "rolling": False, "user": None}),
     "global cost per month limit has room again (a new month began)"),
])
def test_every_metric_reads_as_one_line(alert: dict[str, Any], line: str) -> None:
    body = slack_message(alert)
    first = body["text"].split("\n")[0]
    assert first == f"*tallygate alert* ({alert['rule']['id']}): {line}"
    assert body["blocks"] == [{"type": "section",
                               "text": {"type": "mrkdwn", "text": body["text"]}}]


def test_top_contributors_follow_on_one_line() -> None:
    alert = payload("cost_usd", {"cost_usd": "2", "threshold_usd": "1", "calls": 9,
                                 "tokens": 90},
                    {"feature": [{"feature": f"f{i}"} for i in range(5)],
                     "user": [{"user": "bob"}], "step": []})
    assert slack_message(alert)["text"].split("\n")[1] == "top feature: f0, f1, f2; user: bob"


def test_names_from_callers_cannot_mention_link_or_format() -> None:
    hostile = "<!channel> & <https://evil.example|click> <@U123>"
    alert = payload("runaway_context", {"run": hostile, "conversation": None,
                                        "user": hostile, "input_tokens": 5, "rule": "size",
                                        "limit": 1, "refused": False},
                    {"run": [{"run": hostile, "user": hostile}]})
    text = slack_message(alert)["text"]
    assert "<" not in text and ">" not in text
    assert "&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;" in text
    assert escape("a&b<c>") == "a&amp;b&lt;c&gt;"
