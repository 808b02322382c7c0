"""Packaging as a new user meets it: `--version`, `init` writing a policy `serve`
accepts, `doctor`, and a missing extra naming its install command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tallygate import __version__
from tallygate.cli.main import app
from tallygate.cli.serve import check_serveable
from tallygate.config import load_policy
from tallygate.sim import SimServer
from tests.support.gateway import running_sim
from tests.support.procs import start_gateway, stop, write_policy
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"tallygate {__version__}"
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")


@pytest.mark.parametrize("keys", [{}, {"OPENAI_API_KEY": "sk-x"},
                                  {"OPENAI_API_KEY": "sk-x", "ANTHROPIC_API_KEY": "sk-y"}])
def test_init_writes_a_policy_serve_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            keys: dict[str, str]) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in keys.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["init"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "tallygate.yaml").read_text()
    assert text.startswith("# tallygate policy") and "sk-x" not in text
    policy = load_policy()  # ./tallygate.yaml, as serve finds it
    assert sorted(policy.providers) == sorted(
        {"OPENAI_API_KEY": "openai", "ANTHROPIC_API_KEY": "anthropic"}[k] for k in keys)
    check_serveable(policy, workers=1)  # no secret missing, nothing serve would refuse
    again = CliRunner().invoke(app, ["init"])
    assert again.exit_code != 0 and "--force" in str(again.exception)
    assert CliRunner().invoke(app, ["init", "--force"]).exit_code == 0


def test_init_policy_serves(tmp_path: Path) -> None:
    env = {**os.environ, "OPENAI_API_KEY": "sk-sim"}
    subprocess.run([sys.executable, "-m", "tallygate", "init"], cwd=tmp_path, env=env,
                   check=True, capture_output=True)
    url, proc = start_gateway(tmp_path / "tallygate.yaml", env={"OPENAI_API_KEY": "sk-sim"})
    stop(proc)
    assert url.startswith("http://127.0.0.1:")


def test_doctor(tmp_path: Path) -> None:
    with running_sim() as (sim, _):
        config = write_policy(tmp_path / "ok.yaml", doctor_policy(tmp_path, sim))
        result = CliRunner().invoke(app, ["doctor", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    checks = {c["what"]: c for c in json.loads(result.stdout)["checks"]}
    assert [checks[w]["status"] for w in ("policy", "state store", "ledger", "provider sim",
                                          "clock")] == ["ok"] * 5

    dead = doctor_policy(tmp_path, None)
    dead["providers"]["sim"]["api_key"] = "${TG_TEST_DOCTOR_UNSET}"
    config = write_policy(tmp_path / "bad.yaml", dead)
    result = CliRunner().invoke(app, ["doctor", "--config", str(config)])
    assert result.exit_code == 1
    assert "TG_TEST_DOCTOR_UNSET is not set" in result.stdout
    assert "fail provider sim" in " ".join(result.stdout.split())


def doctor_policy(tmp_path: Path, sim: SimServer | None) -> dict:  # type: ignore[type-arg]
    base = sim.url if sim else f"http://127.0.0.1:{free_port()}"
    return {"storage": {"state": f"sqlite:///{tmp_path}/s.db",
                        "ledger": f"sqlite:///{tmp_path}/l.db"},
            "providers": {"sim": {"protocol": "openai", "base_url": f"{base}/v1",
                                  "api_key": "sk-sim"}}}


BLOCK = """
import sys
sys.modules[{module!r}] = None  # as if the extra were not installed
from tallygate.cli.main import run
sys.argv = ["tallygate", *sys.argv[1:]]
run()
"""


@pytest.mark.parametrize(("module", "args", "extra"), [
    ("redis", ["flags", "list", "--store", "redis://127.0.0.1:1/0"], "redis"),
    ("psycopg", ["report", "--ledger", "postgresql://u@127.0.0.1:1/db"], "postgres"),
    ("psycopg", ["keys", "list", "--store", "postgresql://u@127.0.0.1:1/db"], "postgres"),
])
def test_a_missing_extra_names_its_install_command(tmp_path: Path, module: str,
                                                   args: list[str], extra: str) -> None:
    result = subprocess.run([sys.executable, "-c", BLOCK.format(module=module), *args],
                            cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 2, result.stderr
    err = result.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.endswith(f"pip install 'tallygate[{extra}]'"), err


def test_metrics_only_import_does_not_load_opentelemetry() -> None:
    code = ("import sys, tallygate.observe, tallygate.gateway.app; "
            "print(any(m.startswith('opentelemetry') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_counting_does_not_import_the_second_tokenizer() -> None:
    """The rank files are read from bpe-openai's data folder; importing the package would
    build its own copy of every encoding first (a third of a second at every CLI start)."""
    code = ("import sys; from tallygate import count_tokens; "
            "n = count_tokens('hello world', model='gpt-4o'); "
            "print(n, any(m.startswith('bpe_openai') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["2", "False"], out.stdout + out.stderr


def test_otlp_exporter_ships_with_the_otel_extra() -> None:
    """`tracing.exporter: otlp` works out of `pip install 'tallygate[otel]'`: spans
    reach a loopback OTLP/HTTP collector as protobuf."""
    import http.server
    import threading

    from tallygate.observe.tracing import make_provider

    received: list[tuple[str, str]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            received.append((self.path, self.headers["content-type"]))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_port}/v1/traces"
        provider = make_provider("otlp", endpoint=endpoint)
        assert provider is not None
        with provider.get_tracer("test").start_as_current_span("call"):
            pass
        assert provider.force_flush(10_000)
        provider.shutdown()
    finally:
        server.shutdown()
    assert received == [("/v1/traces", "application/x-protobuf")]
