"""A library script that makes calls and then ends, in every way a process can end:
every call reaches the ledger (directly, or through the journal that `tallygate report`
replays), with the provider's tokens, and tallygate prints nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tallygate.sim import SimServer
from tests.support.cli import tallygate_here
from tests.support.gateway import running_sim

CALLS = 6
PRELUDE = """
import asyncio, json, os, signal, sys
import openai, tallygate

gov = tallygate.Governor.from_config(sys.argv[1])
SIM = sys.argv[2]
HI = [{"role": "user", "content": "Hello there, how are you?"}]

def told(usage):
    print(json.dumps(usage.total_tokens), flush=True)

def sync_calls(n):
    client = gov.openai(openai.OpenAI(base_url=SIM + "/v1", api_key="sk", max_retries=0),
                        feature="chat", user="exiter")
    for _ in range(n):
        told(client.chat.completions.create(model="gpt-4o-mini", messages=HI).usage)
    return client
"""
ENDINGS = {
    "normal": "sync_calls(6)",
    "async": """
async def main():
    client = gov.openai(openai.AsyncOpenAI(base_url=SIM + "/v1", api_key="sk", max_retries=0),
                        feature="chat", user="exiter")
    for _ in range(6):
        told((await client.chat.completions.create(model="gpt-4o-mini", messages=HI)).usage)
asyncio.run(main())
""",
    "open_stream": """
client = sync_calls(5)
stream = client.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)
parts = iter(stream)
next(parts); next(parts)
print("stream", flush=True)
""",
    "exception": "sync_calls(6)\nraise RuntimeError('boom from the script')",
    "sys_exit": "sync_calls(6)\nsys.exit(3)",
    "sigterm": "sync_calls(6)\nos.kill(os.getpid(), signal.SIGTERM)",
    "os_exit": "sync_calls(6)\nos._exit(0)",
    "sigkill": "sync_calls(6)\nos.kill(os.getpid(), signal.SIGKILL)",
}
EXIT_CODES = {"exception": 1, "sys_exit": 3, "sigterm": -signal.SIGTERM,
              "sigkill": -signal.SIGKILL}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with running_sim() as (server, _):
        yield server


def _policy(tmp: Path, sim: SimServer) -> Path:
    path = tmp / "tallygate.yaml"
    path.write_text(textwrap.dedent(f"""\
        storage: {{state: "sqlite:///{tmp}/state.db", ledger: "sqlite:///{tmp}/ledger.db"}}
        providers:
          openai: {{protocol: openai, base_url: "{sim.url}/v1", api_key: sk-sim}}
        features:
          chat: {{max_output: 40, model: gpt-4o-mini}}
        """))
    return path


def _report(policy: Path) -> dict:  # type: ignore[type-arg]
    out = tallygate_here("report", "--config", str(policy), "--by", "user", "--json",
                         cwd=policy.parent)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_every_call_is_in_the_report_however_the_script_ends(
        ending: str, sim: SimServer, tmp_path: Path) -> None:
    policy = _policy(tmp_path, sim)
    script = tmp_path / "script.py"
    script.write_text(PRELUDE + textwrap.dedent(ENDINGS[ending]))
    done = subprocess.run([sys.executable, str(script), str(policy), sim.url], check=False,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == EXIT_CODES.get(ending, 0), done.stderr
    if ending == "exception":  # the script's own traceback, nothing of tallygate's
        assert "boom from the script" in done.stderr
        assert "tallygate" not in done.stderr.replace(str(tmp_path), "")
    else:
        assert done.stderr == ""
    told = [int(line) for line in done.stdout.split() if line.isdigit()]
    [row] = _report(policy)["rows"]
    assert row["key"] == "exiter" and row["calls"] == CALLS
    if ending == "open_stream":  # five answered calls and the stream it left open
        assert len(told) == 5 and row["total_tokens"] > sum(told)
    else:
        assert len(told) == CALLS and row["total_tokens"] == sum(told)


MANY = """
import threading
hooks = len(threading._threading_atexits)
for _ in range(20):  # governors made and closed by the dozen: no hook left per governor
    with tallygate.Governor.from_config(sys.argv[1]) as each:
        each.openai(openai.OpenAI(base_url=SIM + "/v1", api_key="sk", max_retries=0),
                    feature="chat", user="closed").chat.completions.create(
                        model="gpt-4o-mini", messages=HI)
others = [tallygate.Governor.from_config(path) for path in sys.argv[3:]]
sync_calls(6)
for other in others:  # left open, as a script leaves them: each flushed at exit
    other.openai(openai.OpenAI(base_url=SIM + "/v1", api_key="sk", max_retries=0),
                 feature="chat", user="exiter").chat.completions.create(
                     model="gpt-4o-mini", messages=HI)
print("hooks", len(threading._threading_atexits) - hooks, flush=True)
"""


def test_several_open_governors_are_all_flushed_at_exit_by_one_hook(
        sim: SimServer, tmp_path: Path) -> None:
    policies = []
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        policies.append(_policy(tmp_path / name, sim))
    script = tmp_path / "script.py"
    script.write_text(PRELUDE + MANY)
    done = subprocess.run([sys.executable, str(script), *(str(p) for p in policies[:1]),
                           sim.url, *(str(p) for p in policies[1:])], check=False,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "hooks 1" in done.stdout
    rows = {row["key"]: row["calls"] for row in _report(policies[0])["rows"]}
    assert rows == {"closed": 20, "exiter": CALLS}
    for policy in policies[1:]:
        assert [(r["key"], r["calls"]) for r in _report(policy)["rows"]] == [("exiter", 1)]
