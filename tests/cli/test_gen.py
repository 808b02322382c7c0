"""`tallygate gen` against the simulated provider, run as a pipeline runs it: a 3-piece
spec generated with its rows (run and step filled), the second run served from the signed
artifact cache (0 tokens, `saved` in `tallygate report`), a tampered entry regenerated,
the cache shared through Redis, budgets and SDK retries applied, bad answers not kept.
The first test runs `tallygate` as a subprocess; the others through its entry point in
this process (`tallygate_here`)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.cli import tallygate, tallygate_here
from tests.support.gateway import running_sim

SCHEMA = {
    "type": "object",
    "properties": {
        "class_name": {"type": "string"},
        "fields": {"type": "array", "items": {
            "type": "object",
            "properties": {"name": {"type": "string"},
                           "type": {"enum": ["str", "int", "float"]}},
            "required": ["name", "type"], "additionalProperties": False}},
    },
    "required": ["class_name", "fields"],
    "additionalProperties": False,
}
SPEC = ("---\ninstructions: Write the dataclass the section describes.\nschema: "
        + json.dumps(SCHEMA) + "\n---\n"
        "# User\nA user has an id, a name and an email.\n\n"
        "# Order\nAn order has an id, a user id and a total.\n\n"
        "```python\n# a comment, not a heading\n```\n\n"
        "# Invoice\nAn invoice has a number and an amount.\n")
NAMES = ["user", "order", "invoice"]


def _policy(tmp: Path, sim_url: str, *, cache: dict | None = None, **feature: Any) -> Path:
    data = {
        "storage": {"state": f"sqlite:///{tmp}/state.db", "ledger": f"sqlite:///{tmp}/ledger.db"},
        "providers": {
            "openai": {"protocol": "openai", "base_url": f"{sim_url}/v1", "api_key": "sk-sim"},
            "anthropic": {"protocol": "anthropic", "base_url": sim_url, "api_key": "sk-sim"},
        },
        "cache": cache if cache is not None else {"hmac_key": "ci-cache-secret"},
        "features": {"gen": {"max_input": 4000, "max_output": 300, "model": "gpt-4o-mini",
                             **feature}},
    }
    path = tmp / "tallygate.yaml"
    path.write_text(yaml.safe_dump(data))
    (tmp / "spec.md").write_text(SPEC)
    return path


def _gen(tmp: Path, *args: str, env: dict[str, str] | None = None, run: Any = tallygate_here
         ) -> tuple[int, dict[str, Any], str]:
    done = run("gen", "spec.md", "--out", "out", "--config", "tallygate.yaml",
                     "--cache", "cache", *args, cwd=tmp, env=env)
    summary = tmp / "out" / "tallygate-gen.json"
    data = json.loads(summary.read_text()) if summary.is_file() else {}
    return done.returncode, data, done.stdout + done.stderr


def _rows(tmp: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(tmp / "ledger.db")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(
            "SELECT run, step, outcome, feature, user, model_used, input_tokens, "
            "output_tokens, tokens_saved, error_code, detail FROM calls ORDER BY ts, step")]
    finally:
        db.close()


def _report(tmp: Path, by: str = "run", run: Any = tallygate_here) -> dict[str, Any]:
    done = run("report", "--config", "tallygate.yaml", "--by", by, "--json", cwd=tmp)
    assert done.returncode == 0, done.stderr
    return {row["key"]: row for row in json.loads(done.stdout)["rows"]}


def test_three_pieces_then_three_cache_hits(tmp_path: Path) -> None:
    with running_sim() as (sim, _):
        _policy(tmp_path, sim.url)
        rc, first, out = _gen(tmp_path, "--run", "job-1", run=tallygate)
        assert rc == 0, out
        assert sim.stats.count("chat/completions") == 3
        bodies = [b for r, b in sim.stats.bodies if r == "chat/completions"]
        assert all(b["response_format"]["json_schema"]["schema"] == SCHEMA for b in bodies)
        assert all(b["max_completion_tokens"] == 300 for b in bodies)
        assert first["calls"] == 3 and first["cache_hits"] == 0 and first["run"] == "job-1"
        for name in NAMES:
            jsonschema.validate(json.loads((tmp_path / "out" / f"{name}.json").read_text()),
                                SCHEMA)
        rows = _rows(tmp_path)
        assert sorted(r["step"] for r in rows) == sorted(NAMES)
        assert {(r["run"], r["outcome"], r["feature"], r["user"]) for r in rows} == {
            ("job-1", "ok", "gen", "ci")}
        tokens = sum(r["input_tokens"] + r["output_tokens"] for r in rows)
        assert tokens == first["tokens"] > 0
        assert {c["name"]: c["input_tokens"] for c in first["chunks"]} == {
            c["name"]: c["planned_input_tokens"] for c in first["chunks"]}  # counted as sent

        rc, second, out = _gen(tmp_path, "--run", "job-2", run=tallygate)
        assert rc == 0, out
        assert sim.stats.count("chat/completions") == 3  # nothing new reached the provider
    assert second["calls"] == 0 and second["cache_hits"] == 3 and second["tokens"] == 0
    assert second["saved_tokens"] == tokens
    hits = [r for r in _rows(tmp_path) if r["run"] == "job-2"]
    assert sorted(r["step"] for r in hits) == sorted(NAMES)
    assert {(r["outcome"], r["input_tokens"], r["output_tokens"]) for r in hits} == {
        ("cached", 0, 0)}
    keys = {c["name"]: c["key"][4:20] for c in second["chunks"]}
    assert all(json.loads(r["detail"])["key"] == keys[r["step"]] for r in hits)
    report = _report(tmp_path, run=tallygate)
    assert report["job-2"]["cache_hits"] == 3 and report["job-2"]["total_tokens"] == 0
    assert report["job-2"]["tokens_saved"] == tokens
    assert report["job-1"]["total_tokens"] == tokens
    assert "3 cache hits" in out and f"{tokens:,} tokens saved" in out


def test_the_run_is_the_ci_job_unless_run_is_given(tmp_path: Path) -> None:
    """Without --run a pipeline's calls are one run per job ($GITHUB_RUN_ID); --run wins;
    with neither, one run per invocation."""
    with running_sim() as (sim, _):
        _policy(tmp_path, sim.url)
        rc, summary, out = _gen(tmp_path, env={"GITHUB_RUN_ID": "4242"})
        assert rc == 0, out
        assert summary["run"] == "4242"
        assert {r["run"] for r in _rows(tmp_path)} == {"4242"}
        rc, summary, out = _gen(tmp_path, "--run", "job-1", env={"GITHUB_RUN_ID": "4242"})
        assert rc == 0, out
        assert summary["run"] == "job-1"
        rc, summary, out = _gen(tmp_path, env={"GITHUB_RUN_ID": ""})
        assert rc == 0, out
        assert summary["run"].startswith("gen-")
    runs = [r["run"] for r in _rows(tmp_path)]
    assert runs[:3] == ["4242"] * 3 and runs[3:6] == ["job-1"] * 3
    assert len(runs) == 9 and runs[6:] == [summary["run"]] * 3


def test_a_tampered_entry_is_regenerated(tmp_path: Path) -> None:
    with running_sim() as (sim, _):
        _policy(tmp_path, sim.url)
        assert _gen(tmp_path)[0] == 0
        entries = sorted((tmp_path / "cache").rglob("*.entry"))
        assert len(entries) == 3
        raw = entries[0].read_bytes()
        entries[0].write_bytes(raw.replace(b"class_name", b"klass_name", 1))
        rc, data, out = _gen(tmp_path)
        assert rc == 0, out
        assert sim.stats.count("chat/completions") == 4  # only the tampered one again
        assert data["calls"] == 1 and data["cache_hits"] == 2
        assert data["cache_entries_refused"] == 1
        assert "failed the signature check" in out
        assert entries[0].read_bytes() != raw.replace(b"class_name", b"klass_name", 1)
        rc, data, _ = _gen(tmp_path)
        assert rc == 0 and data["cache_hits"] == 3  # the rewritten entry is genuine
        assert sim.stats.count("chat/completions") == 4
        # Another key (a fork's, an attacker's) finds no valid entry: all regenerated.
        config = tmp_path / "tallygate.yaml"
        config.write_text(config.read_text().replace("ci-cache-secret", "another-key"))
        rc, data, _ = _gen(tmp_path)
        assert rc == 0 and data["calls"] == 3 and data["cache_entries_refused"] == 3


def test_dry_run_shows_chunks_and_what_is_cached_without_calling(tmp_path: Path) -> None:
    with running_sim() as (sim, _):
        _policy(tmp_path, sim.url)
        done = tallygate_here("gen", "spec.md", "--out", "out", "--cache", "cache",
                              "--dry-run", "--json", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        plan = json.loads(done.stdout)
        assert [c["status"] for c in plan["chunks"]] == ["planned"] * 3
        assert all(c["planned_input_tokens"] > 0 for c in plan["chunks"])
        assert not (tmp_path / "out").exists()
        assert sim.stats.total == 0
        (tmp_path / "spec.md").write_text(SPEC.replace("a number and an amount",
                                                       "a number, an amount and a due date"))
        assert _gen(tmp_path)[0] == 0
        (tmp_path / "spec.md").write_text(SPEC)
        again = tallygate_here("gen", "spec.md", "--out", "out", "--cache", "cache",
                               "--dry-run", cwd=tmp_path)
        assert sim.stats.total == 3
    assert again.returncode == 0
    assert "2 cached, 1 to generate" in again.stdout  # the restored piece is not cached
    assert len(_rows(tmp_path)) == 3  # a dry run records nothing


def test_one_piece_edited_regenerates_only_that_piece(tmp_path: Path) -> None:
    with running_sim() as (sim, _):
        _policy(tmp_path, sim.url)
        assert _gen(tmp_path)[0] == 0
        (tmp_path / "spec.md").write_text(SPEC.replace("\n", "\r\n").replace(
            "a user id and a total", "a user id, a total and a currency"))
        rc, data, _ = _gen(tmp_path)
        assert rc == 0
        assert sim.stats.count("chat/completions") == 4
    status = {c["name"]: c["status"] for c in data["chunks"]}
    assert status == {"user": "cached", "order": "generated", "invoice": "cached"}


def test_anthropic_protocol_sends_output_config(tmp_path: Path) -> None:
    with running_sim() as (sim, _):
        _policy(tmp_path, sim.url)
        rc, data, out = _gen(tmp_path, "--model", "claude-haiku-4-5")
        assert rc == 0, out
        bodies = [b for r, b in sim.stats.bodies if r == "messages"]
    assert len(bodies) == 3 and data["protocol"] == "anthropic"
    assert all(b["output_config"]["format"] == {"type": "json_schema", "schema": SCHEMA}
               for b in bodies)
    assert all(b["system"] == "Write the dataclass the section describes." for b in bodies)
    jsonschema.validate(json.loads((tmp_path / "out" / "user.json").read_text()), SCHEMA)


def test_the_cache_is_shared_through_redis(tmp_path: Path, redis_url: str) -> None:
    runners = [tmp_path / "runner-a", tmp_path / "runner-b"]
    with running_sim() as (sim, _):
        for runner in runners:
            runner.mkdir()
            _policy(runner, sim.url, cache={"hmac_key": "ci-cache-secret",
                                            "backend": redis_url})
        assert _gen(runners[0], "--cache", "policy")[0] == 0
        rc, data, out = _gen(runners[1], "--cache", "policy")
        assert rc == 0, out
        assert sim.stats.count("chat/completions") == 3
    assert data["cache_hits"] == 3 and data["cache"].startswith("redis://127.0.0.1:")


def test_the_sdk_retries_rate_limits_as_the_feature_says(tmp_path: Path) -> None:
    with running_sim() as (sim, _):
        _policy(tmp_path, sim.url, retries=2)
        sim.push_faults("429:0.01", "500")
        rc, data, out = _gen(tmp_path, "--concurrency", "1")
        assert rc == 0, out
        assert sim.stats.count("chat/completions") == 5  # 2 refused, retried, then 3 ok
        assert data["generated"] == 3
        sim.push_faults("500", "500", "500")
        rc, data, out = _gen(tmp_path, "--concurrency", "1", "--refresh", "--retries", "1")
    assert rc == 1
    failed = [c for c in data["chunks"] if c["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"].startswith("provider error 500")


def test_a_context_length_error_is_retried_with_half_the_output(tmp_path: Path) -> None:
    with running_sim() as (sim, _):
        _policy(tmp_path, sim.url)
        sim.push_faults("context_length_exceeded")
        rc, data, out = _gen(tmp_path, "--concurrency", "1")
        caps = [b["max_completion_tokens"] for r, b in sim.stats.bodies]
    assert rc == 0, out
    assert data["generated"] == 3
    assert caps == [300, 150, 300, 300]  # the library's recovery, through gen unchanged
    first = _rows(tmp_path)[0]
    assert first["outcome"] == "ok"
    assert json.loads(first["detail"])["halved"] == [{"from": 300, "to": 150}]


def test_a_budget_refusal_fails_the_job_and_skips_the_rest(tmp_path: Path) -> None:
    with running_sim() as (sim, _):
        # A hold is the input plus the output cap (~420 tokens): the first fits in 500,
        # the second does not once the first has settled (~140 used).
        _policy(tmp_path, sim.url, tokens_per_day=500)
        rc, data, out = _gen(tmp_path, "--concurrency", "1", "--run", "job-9")
        assert rc == 1
        assert sim.stats.count("chat/completions") == 1
    statuses = [c["status"] for c in data["chunks"]]
    assert statuses == ["generated", "failed", "skipped"]
    assert "FAILED: order:" in out
    assert "not run: an earlier piece was refused" in data["chunks"][2]["error"]
    rows = _rows(tmp_path)
    assert [r["outcome"] for r in rows] == ["ok", "rejected"]
    assert rows[1]["step"] == "order" and rows[1]["run"] == "job-9"


def test_a_cut_answer_is_neither_written_nor_cached(tmp_path: Path) -> None:
    with running_sim() as (sim, _):
        _policy(tmp_path, sim.url)
        rc, data, _ = _gen(tmp_path, "--max-output", "5")
        assert rc == 1
        assert all(c["status"] == "failed" for c in data["chunks"])
        assert "cut at max_output 5 tokens" in data["chunks"][0]["error"]
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["tallygate-gen.json"]
        _gen(tmp_path, "--max-output", "5")
        assert sim.stats.count("chat/completions") == 6  # nothing was cached


def test_without_an_hmac_key_the_cache_is_off(tmp_path: Path) -> None:
    with running_sim() as (sim, _):
        _policy(tmp_path, sim.url, cache={})
        assert _gen(tmp_path)[0] == 0
        rc, data, _ = _gen(tmp_path)
        assert sim.stats.count("chat/completions") == 6
    assert rc == 0 and data["cache"].startswith("off: set cache.hmac_key")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(("spec", "args", "message"), [
    ("instructions: x\npeices: []\n", [], "unknown key (did you mean 'pieces'?)"),
    ("spec: hello\nparams: {temprature: 0}\n", [],
     "params.temprature: not a sampling parameter of the openai protocol "
     "(did you mean 'temperature'?)"),
    ("spec: hello\n", ["--model", "gpt-4oo"], "Did you mean: gpt-4o"),
    ("spec: hello\n", ["--cache-ttl", "soon"], "--cache-ttl 'soon'"),
    ("spec: [unclosed\n", [], "invalid YAML at line"),
    ("pieces: []\n", [], "the spec has no pieces"),
    ("spec: hello\n", ["--feature", ""], "--feature must be"),
])
def test_usage_errors_exit_2(tmp_path: Path, spec: str, args: list[str], message: str) -> None:
    _policy(tmp_path, "http://127.0.0.1:9")
    (tmp_path / "spec.yaml").write_text(spec)
    done = tallygate_here("gen", "spec.yaml", "--out", "out", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
