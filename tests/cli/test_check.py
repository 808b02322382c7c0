"""`tallygate check` driven by the policy's `check:` section on a sample tree: every
format (table, JSON, GitHub annotations + job summary, JUnit), `--compare-to` on a
throwaway git repository, pyproject.toml, and the errors (exit 2) a typo must give. The
first test runs `tallygate` as a subprocess, the others in this process."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from tallygate.core.catalog import resolve_model
from tallygate.core.tokens import count_request, count_text
from tallygate.types import Usage
from tests.support.cli import commit_all, tallygate, tallygate_here

SYSTEM = "You are a careful reviewer. " * 5
REVIEW = "Review the diff line by line and name each risk. " * 12
GREET = {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Say hello."}]}
LONG = {"messages": [{"role": "user", "content": "word " * 120}]}
SPEC = "# Spec\n\nThe gateway counts tokens and settles usage.\n"

POLICY = {
    "storage": {"state": "memory://", "ledger": "memory://"},
    "features": {"chat": {"max_input": 60, "model": "gpt-4o-mini"}},
    "check": {
        "model": "gpt-4o",
        "budgets": [
            {"path": "prompts/*.txt", "max_tokens": 100},
            {"path": "prompts/chat/*.json", "feature": "chat"},
            {"path": "docs/**/*.md", "max_cost_usd": 0.0005, "name": "spec"},
            {"path": "prompts/**", "per": "entry", "max_tokens": 1000, "name": "all prompts"},
        ],
    },
}


def _tree(root: Path, policy: dict = POLICY, *, long_chat: bool = True) -> Path:
    (root / "prompts" / "chat").mkdir(parents=True)
    (root / "docs" / "api").mkdir(parents=True)
    (root / "prompts" / "system.txt").write_text(SYSTEM)
    (root / "prompts" / "review.txt").write_text(REVIEW)
    (root / "prompts" / "chat" / "greet.json").write_text(json.dumps(GREET))
    if long_chat:
        (root / "prompts" / "chat" / "long.json").write_text(json.dumps(LONG))
    (root / "docs" / "api" / "SPEC.md").write_text(SPEC)
    (root / "prompts" / "logo.png").write_bytes(b"\x89PNG\x00\x00\x01")
    (root / "tallygate.yaml").write_text(yaml.safe_dump(policy))
    return root


def _tokens(text: str, model: str = "gpt-4o") -> int:
    return count_text(text, model).tokens


def _chat_tokens(body: dict) -> int:
    return count_request("openai", "chat/completions", body, resolve_model("gpt-4o-mini")).tokens


def test_json_report_counts_what_the_library_counts(tmp_path: Path) -> None:
    _tree(tmp_path)
    done = tallygate("check", "--format", "json", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    entries = {e["name"]: e for e in report["entries"]}
    files = {f["file"]: f for f in entries["prompts/*.txt"]["files"]}
    assert files["prompts/system.txt"]["tokens"] == _tokens(SYSTEM) <= 100
    assert files["prompts/review.txt"]["tokens"] == _tokens(REVIEW) > 100
    assert files["prompts/review.txt"]["problems"] == [
        f"{_tokens(REVIEW):,} tokens, over max_tokens 100 by {_tokens(REVIEW) - 100:,}"]
    chat = entries["prompts/chat/*.json"]
    assert chat["model"] == "gpt-4o-mini"  # the feature's model counts, as on the gateway
    assert chat["limits"]["features.chat.max_input"] == 60
    by_file = {f["file"]: f for f in chat["files"]}
    assert by_file["prompts/chat/greet.json"]["kind"] == "chat"
    assert by_file["prompts/chat/greet.json"]["tokens"] == _chat_tokens(GREET)
    assert by_file["prompts/chat/long.json"]["tokens"] == _chat_tokens(LONG) > 60
    spec = entries["spec"]
    cost = resolve_model("gpt-4o").cost_nusd(Usage(input_tokens=_tokens(SPEC)))
    assert spec["files"][0]["cost_usd"] == f"{cost / 1e9:.9f}".rstrip("0")
    assert spec["ok"] is True
    total = entries["all prompts"]
    as_gpt4o = [count_request("openai", "chat/completions", body, resolve_model("gpt-4o"))
                for body in (GREET, LONG)]
    assert total["total_tokens"] == (_tokens(SYSTEM) + _tokens(REVIEW)
                                     + sum(c.tokens for c in as_gpt4o))
    skipped = [f for f in total["files"] if f["skipped"]]
    assert [f["file"] for f in skipped] == ["prompts/logo.png"]
    assert report["over"] == ["prompts/chat/long.json", "prompts/review.txt"]
    assert report["ok"] is False


def test_table_names_each_breach_and_passes_once_fixed(tmp_path: Path) -> None:
    _tree(tmp_path)
    done = tallygate_here("check", cwd=tmp_path)
    assert done.returncode == 1
    assert "OVER BUDGET: prompts/review.txt: " in done.stdout
    assert "OVER BUDGET: prompts/chat/long.json: " in done.stdout
    assert "over features.chat.max_input 60" in done.stdout
    assert "skipped binary file: prompts/logo.png" in done.stdout
    assert "2 problem(s) in 5 files" in done.stdout.replace("\n", " ")
    (tmp_path / "prompts" / "review.txt").write_text(SYSTEM)
    (tmp_path / "prompts" / "chat" / "long.json").unlink()
    fixed = tallygate_here("check", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stdout
    assert "OVER BUDGET" not in fixed.stdout and "within 4 budgets" in fixed.stdout


def test_per_entry_total_and_cost_limits(tmp_path: Path) -> None:
    policy = {**POLICY, "check": {"budgets": [
        {"path": "prompts/*.txt", "per": "entry", "max_tokens": _tokens(SYSTEM) + 1,
         "name": "system prompt parts"},
        {"path": "docs/**", "max_cost_usd": 0.000000001},
    ]}}
    _tree(tmp_path, policy)
    report = json.loads(tallygate_here("check", "--json", cwd=tmp_path).stdout)
    parts, docs = report["entries"]
    total = _tokens(SYSTEM) + _tokens(REVIEW)
    assert parts["problems"] == [f"the entry's 2 files total {total:,} tokens, over max_tokens "
                                 f"{_tokens(SYSTEM) + 1:,} by {total - _tokens(SYSTEM) - 1:,}"]
    assert all(not f["problems"] for f in parts["files"])  # the total is what is limited
    assert docs["files"][0]["problems"][0].endswith("over max_cost_usd $0.000000001")


def test_a_file_past_the_counting_cap_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    policy = {**POLICY, "server": {"max_chars": 200},
              "check": {"budgets": [{"path": "prompts/*.txt", "max_tokens": 100_000}]}}
    _tree(tmp_path, policy)
    (tmp_path / "prompts" / "huge.txt").write_text("x" * 5_000)
    done = tallygate_here("check", "--json", cwd=tmp_path)
    assert done.returncode == 1
    files = {f["file"]: f for f in json.loads(done.stdout)["entries"][0]["files"]}
    assert files["prompts/huge.txt"]["problems"] == [
        "cannot be counted: over 800 bytes, more than the counting cap of 200 characters"]
    assert files["prompts/system.txt"]["problems"] == []
    assert any(p.startswith("cannot be counted: input of")
               for p in files["prompts/review.txt"]["problems"])  # 200 chars < its length


def test_github_annotations_and_job_summary(tmp_path: Path) -> None:
    _tree(tmp_path)
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    done = tallygate_here("check", "--format", "github", cwd=tmp_path,
                     env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert done.returncode == 1
    errors = [line for line in done.stdout.splitlines() if line.startswith("::error ")]
    assert len(errors) == 2
    assert errors[0].startswith("::error file=prompts/review.txt,line=1,"
                                "title=tallygate check%3A prompts/*.txt::")
    assert f"prompts/review.txt: {_tokens(REVIEW):,} tokens, over max_tokens 100" in errors[0]
    assert errors[1].startswith("::error file=prompts/chat/long.json,line=1,"
                                "title=tallygate check%3A prompts/chat/*.json::")
    text = summary.read_text()
    assert text.startswith("earlier step\n### ❌ tallygate check: 2 problem(s)")  # appended
    assert "| prompts/\\*.txt | prompts/review.txt | " in text
    assert "- OVER BUDGET: prompts/review.txt: " in text


def test_github_escapes_workflow_command_characters(tmp_path: Path) -> None:
    policy = {**POLICY, "check": {"budgets": [{"path": "odd/*", "max_tokens": 1}]}}
    _tree(tmp_path, policy)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "50%,a:b.txt").write_text("many words here\n::error::fake")
    done = tallygate_here("check", "--format", "github", cwd=tmp_path)
    errors = [line for line in done.stdout.splitlines() if line.startswith("::")]
    assert len(errors) == 1  # the file's own "::error::" text cannot start a command
    assert errors[0].startswith("::error file=odd/50%25%2Ca%3Ab.txt,line=1,")
    assert "::odd/50%25,a:b.txt: " in errors[0]


def test_entry_problem_points_at_its_line_in_the_config(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "tallygate.yaml").write_text(
        "storage: {state: 'memory://', ledger: 'memory://'}\n"
        "check:\n  budgets:\n    - {path: 'prompts/*.txt', max_tokens: 10000}\n"
        "    - {path: 'promtps/*.md', max_tokens: 100}\n")
    done = tallygate_here("check", "--format", "github", cwd=tmp_path)
    assert done.returncode == 1
    assert ("::error file=tallygate.yaml,line=5,title=tallygate check%3A promtps/*.md::"
            "promtps/*.md: the glob 'promtps/*.md' matches no files") in done.stdout


def test_junit_report(tmp_path: Path) -> None:
    _tree(tmp_path)
    out = tmp_path / "reports" / "check.xml"
    done = tallygate_here("check", "--format", "junit", "--output", str(out), cwd=tmp_path)
    assert done.returncode == 1
    assert "junit report written to" in done.stdout and "OVER BUDGET" in done.stdout
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites" and root.get("failures") == "2"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"prompts/*.txt", "prompts/chat/*.json", "spec", "all prompts"}
    cases = {c.get("name"): c for c in suites["prompts/*.txt"].findall("testcase")}
    assert cases["prompts/system.txt"].find("failure") is None
    failure = cases["prompts/review.txt"].find("failure")
    assert failure is not None and "over max_tokens 100" in failure.get("message", "")
    everything = {c.get("name"): c for c in suites["all prompts"].findall("testcase")}
    assert everything["prompts/logo.png"].find("skipped") is not None
    assert everything["all prompts (total)"].find("failure") is None
    assert suites["all prompts"].get("tests") == "6"
    stdout = tallygate_here("check", "--format", "junit", cwd=tmp_path).stdout
    assert ET.fromstring(stdout.split("\n", 1)[1]).get("tests") == root.get("tests")


def test_compare_to_catches_a_prompt_that_grew_30_percent(tmp_path: Path) -> None:
    policy = {**POLICY, "check": {"max_growth": 20, "budgets": [
        {"path": "prompts/*.txt", "max_tokens": 10_000},
        {"path": "docs/**/*.md", "max_tokens": 10_000, "max_growth": 50},
    ]}}
    _tree(tmp_path, policy, long_chat=False)
    base = commit_all(tmp_path, "prompts as reviewed")
    grown = "Review the diff. " * 40
    bigger = grown + "Review the diff. " * 12  # +30 % words, about +30 % tokens
    (tmp_path / "prompts" / "review.txt").write_text(grown)
    commit_all(tmp_path, "a longer review prompt")
    (tmp_path / "prompts" / "review.txt").write_text(bigger)
    (tmp_path / "prompts" / "system.txt").write_text(SYSTEM + "Be kind. ")  # a few %
    (tmp_path / "prompts" / "new.txt").write_text("A new prompt.")
    (tmp_path / "docs" / "api" / "SPEC.md").write_text(SPEC + "More.")  # < 50 %
    old, new = _tokens(grown), _tokens(bigger)
    assert 1.25 < new / old < 1.35

    done = tallygate_here("check", "--compare-to", "HEAD", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    pct = f"{(new - old) * 100 / old:.1f}"
    assert (f"OVER BUDGET: prompts/review.txt: grew {pct}% ({old:,} → {new:,} tokens), "
            "over max_growth 20%") in done.stdout
    assert done.stdout.count("OVER BUDGET") == 1  # system.txt (+few %) and SPEC (< 50 %) pass
    report = json.loads(tallygate_here("check", "--compare-to", "HEAD", "--json",
                                  cwd=tmp_path).stdout)
    files = {f["file"]: f for f in report["entries"][0]["files"]}
    assert files["prompts/review.txt"]["old_tokens"] == old
    assert files["prompts/review.txt"]["delta"] == new - old
    assert files["prompts/new.txt"]["old_tokens"] is None  # new file: no growth to judge
    assert report["compare_to"] == "HEAD"

    # Against the first commit, the review prompt grew far more; a CLI --max-growth
    # only sets the default, so the docs entry keeps its own 50 %.
    wide = tallygate_here("check", "--compare-to", base, "--max-growth", "500", "--json",
                     cwd=tmp_path)
    assert wide.returncode == 0, wide.stdout
    (tmp_path / "prompts" / "system.txt").unlink()
    gone = json.loads(tallygate_here("check", "--compare-to", "HEAD", "--json",
                                "--max-growth", "1000", cwd=tmp_path).stdout)
    assert gone["entries"][0]["removed"] == ["prompts/system.txt"]


def test_pyproject_table(tmp_path: Path) -> None:
    _tree(tmp_path, {"storage": {"state": "memory://", "ledger": "memory://"},
                     "features": {"chat": {"max_input": 60}}})
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.tallygate.check]\nmodel = "gpt-4o"\n\n'
        '[[tool.tallygate.check.budgets]]\npath = "prompts/*.txt"\nmax_tokens = 100\n\n'
        '[[tool.tallygate.check.budgets]]\npath = "prompts/chat/*.json"\nfeature = "chat"\n')
    done = tallygate_here("check", "--json", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["source"] == "pyproject.toml"
    assert report["over"] == ["prompts/chat/long.json", "prompts/review.txt"]
    (tmp_path / "pyproject.toml").write_text(
        '[tool.tallygate.check]\n[[tool.tallygate.check.budgets]]\npath = "p"\nmax_tokns = 1\n')
    bad = tallygate_here("check", "--config", "pyproject.toml", cwd=tmp_path)
    assert bad.returncode == 2
    assert ("pyproject.toml [tool.tallygate]: check.budgets[0].max_tokns: unknown key "
            "(did you mean 'max_tokens'?)") in bad.stderr


@pytest.mark.parametrize(("budget", "message"), [
    ({"path": "prompts/*.txt", "max_tokns": 5}, "unknown key (did you mean 'max_tokens'?)"),
    ({"path": "prompts/*.txt", "feature": "chta"},
     "check.budgets[0].feature: no feature 'chta' in the policy (did you mean 'chat'?)"),
    ({"path": "prompts/*.txt", "feature": "summary"},
     "feature 'summary' has no max_input to check against"),
    ({"path": "../outside/*.txt", "max_tokens": 5}, "may not contain '..'"),
    ({"path": "/etc/*", "max_tokens": 5}, "expected a relative glob"),
    ({"path": "prompts/*.txt"}, "give max_tokens, max_cost_usd, feature or max_growth"),
    ({"path": "prompts/*.txt", "max_tokens": 5, "model": "gpt-4oo"}, "Did you mean: gpt-4o"),
])
def test_configuration_errors_exit_2_with_one_line(tmp_path: Path, budget: dict,
                                                   message: str) -> None:
    policy = {**POLICY, "features": {"chat": {"max_input": 60}, "summary": {}},
              "check": {"budgets": [budget]}}
    _tree(tmp_path, policy)
    done = tallygate_here("check", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "xml"], "expected one of table, json, github, junit"),
    (["--output", "x.txt"], "--output writes a json or junit report"),
    (["prompts"], "PATHS need --budget N"),
    (["--budget", "5"], "--budget applies to PATHS"),
    (["--compare-to", "no-such-branch"], "not inside a git work tree"),
    (["--max-growth", "lots"], "expected a percentage"),
])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    _tree(tmp_path)
    done = tallygate_here("check", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_unknown_or_hostile_refs_are_usage_errors(tmp_path: Path) -> None:
    _tree(tmp_path)
    commit_all(tmp_path, "init")
    for ref, message in (("no-such-branch", "no such commit in this repository"),
                         ("--output=/tmp/x", "expected a git ref"),
                         ("HEAD HEAD", "expected a git ref")):
        done = tallygate_here("check", f"--compare-to={ref}", cwd=tmp_path)
        assert done.returncode == 2, (ref, done.stdout, done.stderr)
        assert message in done.stderr


def test_no_budgets_anywhere_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "tallygate.yaml").write_text("storage: {state: 'memory://'}\n")
    done = tallygate_here("check", cwd=tmp_path)
    assert done.returncode == 2
    assert "no budgets to check" in done.stderr
