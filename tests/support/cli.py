"""Running the `tallygate` command as a user does (a subprocess), through its console
entry point in this process (the same `run()`, argv, streams, environment and working
directory, without paying an interpreter and its imports per command), or one wing of it
in process; and throwaway git repositories that read no configuration from outside the
test's directory."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import typer
from click.testing import CliRunner


def tallygate(*args: str, cwd: Path, env: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tallygate", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})


def tallygate_here(*args: str, cwd: Path, env: dict[str, str] | None = None,
                   stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`tallygate ARGS` run by its console entry point (`tallygate.cli.main.run`) in this
    process, answering as `tallygate()` does: exit code, stdout, stderr. Each test file keeps
    at least one command run as a real subprocess."""
    from tallygate.cli.main import run

    argv, here, main = sys.argv, Path.cwd(), sys.modules["__main__"]
    code: int | str | None = 0
    with CliRunner().isolation(input=stdin, env=env) as (out, err, _):
        sys.argv = ["tallygate", *args]
        # As under the console script, click names the program from argv[0] ("Usage:
        # tallygate …"), not from the test runner's package.
        sys.modules["__main__"] = types.ModuleType("__main__")
        os.chdir(cwd)
        try:
            run()
        except SystemExit as stop:
            code = stop.code
        finally:
            sys.argv, sys.modules["__main__"] = argv, main
            os.chdir(here)
        sys.stdout.flush()
        sys.stderr.flush()
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    if isinstance(code, str):  # sys.exit("message"): printed to stderr, exit 1
        stderr, code = stderr + code + "\n", 1
    return subprocess.CompletedProcess(["tallygate", *args], code or 0, stdout, stderr)


def cli_with(*wings: Callable[[typer.Typer], None]) -> typer.Typer:
    """A `tallygate`-like app holding only these wings' commands (each a `register`). The
    root callback keeps a lone command a sub-command, as in the real app: without it Typer
    would run that command as the app itself."""
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.callback()
    def main() -> None:
        """tallygate (test harness)."""

    for register in wings:
        register(app)
    return app


def git_env(home: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                          timeout=60, check=True, env=git_env(repo))
    return done.stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    if not (repo / ".git").exists():
        git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")
