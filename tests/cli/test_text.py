"""The count / chunk / check commands, run as a user runs them: the first test and the
serve refusals as a subprocess, the others through the entry point in this process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tallygate.core.catalog import resolve_model
from tallygate.core.tokens import count_request, count_text
from tests.support.cli import tallygate_here

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return tallygate_here(*args, cwd=ROOT, stdin=stdin)


def run_process(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # the console script a user runs
        [str(Path(sys.executable).parent / "tallygate"), *args],
        capture_output=True,
        check=False,
        text=True,
        input=stdin,
        cwd=ROOT,
        timeout=120,
    )


def test_count_chat_json_matches_library() -> None:
    proc = run_process("count", "examples/chat.json", "--json")
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    body = json.loads((ROOT / "examples/chat.json").read_text())
    expected = count_request("openai", "chat/completions", body, resolve_model("gpt-4o"))
    assert row["tokens"] == expected.tokens and row["kind"] == "chat"


def test_count_stdin_and_claude() -> None:
    proc = run("count", "-", "--model", "claude-sonnet-4-5", "--json", stdin="hello there")
    row = json.loads(proc.stdout)
    assert row["tokens"] == count_text("hello there", "claude-sonnet-4-5").tokens
    assert row["exact"] is False


def test_check_gate(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "small.txt").write_text("hi there")
    (tmp_path / "sub" / "big.txt").write_text("word " * 200)
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02" * 10)
    ok = run("check", str(tmp_path), "--budget", "1000")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "skipped binary file" in ok.stdout
    bad = run("check", str(tmp_path), "--budget", "50")
    assert bad.returncode == 1
    assert "OVER BUDGET" in bad.stdout and "big.txt" in bad.stdout
    report = json.loads(run("check", str(tmp_path), "--budget", "50", "--json").stdout)
    assert [Path(f).name for f in report["over"]] == ["big.txt"]


def test_chunk_writes_pieces(tmp_path: Path) -> None:
    src = tmp_path / "doc.txt"
    text = "Sentence number one. " * 200
    src.write_text(text)
    out = tmp_path / "pieces"
    proc = run("chunk", str(src), "--max-tokens", "50", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.iterdir())
    assert "".join(f.read_text() for f in files) == text
    assert all(count_text(f.read_text()).tokens <= 50 for f in files)


def test_errors_are_one_line() -> None:
    for args in (["count", "missing.txt"], ["count", "examples/chat.json", "--model", "gpt4o"]):
        proc = run(*args)
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and "tallygate: error:" in proc.stderr


@pytest.mark.parametrize(("storage", "message"), [
    ("{state: 'memory://', ledger: 'memory://'}",
     "memory:// cannot be shared by several workers"),
    ("{state: 'sqlite:///{tmp}/s.db', ledger: 'memory://', state_mode: owner}",
     "state_mode owner keeps the limits in one process"),
])
def test_serve_refuses_per_process_state_with_several_workers(
        tmp_path, storage: str, message: str) -> None:
    config = tmp_path / "t.yaml"
    config.write_text(f"storage: {storage.replace('{tmp}', str(tmp_path))}\n")
    result = subprocess.run(
        [sys.executable, "-m", "tallygate", "serve", "--config", str(config), "--workers", "2"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_config_models_apply_to_count(tmp_path) -> None:
    config = tmp_path / "t.yaml"
    config.write_text("models:\n  my-local-llama: {provider: local, context_window: 8192, "
                      "encoding: cl100k_base, input_per_mtok: 0, output_per_mtok: 0}\n")
    text = tmp_path / "p.txt"
    text.write_text("hello world, counted with cl100k")
    result = run("count", str(text), "--model", "my-local-llama", "--config", str(config),
                 "--json")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["model"] == "my-local-llama" and row["encoding"] == "cl100k_base"
    assert row["exact"] is True


@pytest.mark.parametrize("args", [
    ["count", "examples/chat.json", "--json"],     # success, JSON on stdout
    ["count", "missing.txt"],                      # a TallygateError: one line, exit 2
    ["count", "examples/chat.json", "--modle", "x"],  # a usage error from the parser
    ["--version"],
])
def test_in_process_runs_answer_as_the_command_does(args: list[str]) -> None:
    """The in-process runner the other CLI tests use gives the real command's exit code,
    stdout and stderr (so a test that passes in process passes for a user)."""
    here, there = run(*args), run_process(*args)
    assert (here.returncode, here.stdout, here.stderr) == (
        there.returncode, there.stdout, there.stderr)
