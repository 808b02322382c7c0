"""`tallygate serve`: validate, bind, announce, then run the gateway under uvicorn
(uvloop + httptools) with the connection defences of gateway/guarded_http.py.

Order matters: the policy (names, URLs, the secrets it will need) is checked and the
port bound before the start-up block is printed, so a "listening" line is never a lie
and every refusal is one line and exit code 2."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
from pathlib import Path
from typing import Annotated, Any

import typer

from tallygate.errors import ConfigError

CONFIG_ENV = "TALLYGATE_CONFIG"
WORKERS_ENV = "TALLYGATE_WORKERS"  # set by `serve`: "1" lets state_mode auto own SQLite
ACCESS_LOG_ENV = "TALLYGATE_ACCESS_LOG"  # set by `serve --access-log`, read by each worker
SPARE_FILES = 256  # descriptors beside the connections: upstream pool, stores, journal


class OneLine(logging.Filter):
    """Server log records as single lines (`tallygate: error: …`); uvicorn's own
    'Application startup failed. Exiting.' after the reason says nothing more."""

    QUIET = frozenset({"Application startup failed. Exiting.",
                       "Waiting for application startup.", "Application startup complete.",
                       "Waiting for application shutdown.", "Application shutdown complete.",
                       "Shutting down"})
    # uvicorn's process lines: the start-up block and the stop lines say it already
    QUIET_PREFIXES = ("Started server process", "Finished server process",
                      "Started parent process", "Stopping parent process",
                      "Waiting for child process", "Uvicorn running on")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self.QUIET or text.startswith(self.QUIET_PREFIXES):
            return False
        record.msg, record.args = " ".join(text.split()), ()
        record.levelname = record.levelname.lower()
        return True


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's and tallygate's loggers: one line each on stderr."""
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
               "formatter": "plain", "filters": ["one_line"]}
    quiet = {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
    return {
        "version": 1, "disable_existing_loggers": False,
        "filters": {"one_line": {"()": "tallygate.cli.serve.OneLine"}},
        "formatters": {"plain": {"format": "tallygate: %(levelname)s: %(message)s"}},
        "handlers": {"stderr": handler},
        "loggers": {"uvicorn": quiet, "uvicorn.error": {"level": level.upper()},
                    "tallygate": quiet},
    }


def app_from_env() -> object:
    """uvicorn factory (one per worker process): the policy named by TALLYGATE_CONFIG."""
    from tallygate.config import load_policy
    from tallygate.gateway.app import create_app
    from tallygate.gateway.reload import policy_source

    return create_app(load_policy(os.environ.get(CONFIG_ENV) or None),
                      sole_process=os.environ.get(WORKERS_ENV) == "1",
                      access_log=os.environ.get(ACCESS_LOG_ENV) or None,
                      source=policy_source())


def check_serveable(policy: Any, workers: int) -> None:
    """ConfigError for what `serve` cannot run: shared-nothing state across workers, or a
    secret whose variable is unset (named, never shown)."""
    from tallygate.config.models import unset_secrets

    if workers > 1 and policy.storage.state.startswith("memory://"):
        # Each worker process would keep its own counters: limits would not hold.
        raise ConfigError(
            "storage.state memory:// cannot be shared by several workers: use "
            "sqlite:///PATH (one machine) or redis:// (several machines), or --workers 1.")
    if workers > 1 and policy.storage.state_mode == "owner" and \
            policy.storage.state.startswith("sqlite:"):
        raise ConfigError(
            "storage.state_mode owner keeps the limits in one process: with several "
            "workers use state_mode shared (or auto), or --workers 1.")
    missing = unset_secrets(policy)
    if missing:
        names = ", ".join(f"{s.variable} ({s.where.rsplit(': ', 1)[-1]})" for s in missing)
        raise ConfigError(f"serve needs these environment variables, which are not set: "
                          f"{names}")


def connection_cap(wanted: int) -> tuple[int, str | None]:
    """The connection cap the open-file limit allows (raising the soft limit when it
    can: each connection is a descriptor, and a refused one briefly holds one too)."""
    need = 2 * wanted + SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted, None
    allowed = max(1, (soft - SPARE_FILES) // 2)
    return allowed, f"lowered from {wanted}: the open-file limit is {soft}"


def state_warning(url: str) -> str | None:
    """restart_warning() for the start-up block; a store that does not answer yet is
    left to `fail_mode` and to `tallygate doctor`."""
    from tallygate.errors import StoreUnavailable
    from tallygate.state import restart_warning

    try:
        return asyncio.run(restart_warning(url))
    except StoreUnavailable:
        return None


def startup_block(policy: Any, source: str, sock: socket.socket, workers: int,
                  guards: Any, cap_note: str | None, access_log: str | None,
                  warning: str | None = None) -> str:
    from tallygate import __version__
    from tallygate.cli.listen import address, redact

    storage = policy.storage
    mode = ""
    if storage.state.startswith("sqlite:"):
        owner = storage.state_mode == "owner" or (storage.state_mode == "auto" and workers == 1)
        mode = " (owner mode: this process keeps the limits)" if owner else " (shared mode)"
    providers = ", ".join(f"{name} ({p.protocol}, {p.base_url})"
                          for name, p in sorted(policy.providers.items())) or "none"
    admin = "on" if policy.admin_key else "off (set TALLYGATE_ADMIN_KEY to enable /admin)"
    metrics = "token required" if policy.metrics.token else "open (set metrics.token)"
    server = policy.server
    defences = (f"header {guards.header_timeout:g} s, body {guards.body_timeout:g} s, "
                f"idle {guards.idle_timeout:g} s, {guards.max_connections} connections"
                f"{f' ({cap_note})' if cap_note else ''}, headers ≤ "
                f"{guards.max_header_bytes // 1024} KiB, auth failures "
                f"{server.auth_failures_per_minute}/min per address")
    if server.http == "uvicorn":
        defences = "off (server.http: uvicorn)"
    rows = [
        ("policy", source), ("state", redact(storage.state) + mode),
        *([("warning", warning)] if warning else []),
        ("ledger", redact(storage.ledger)), ("providers", providers),
        ("admin API", admin), ("metrics", metrics), ("defences", defences),
        ("access log", access_log or "off"),
        ("listening", f"{address(sock)} ({workers} worker{'s' if workers > 1 else ''})"),
    ]
    return "\n".join([f"tallygate {__version__}"] + [f"  {k:<11}{v}" for k, v in rows])


def _run(sock: socket.socket, workers: int, log_level: str, guards: Any, *,
         plain: bool, deadline: float) -> None:
    """uvicorn over the bound socket with the gateway's own way to stop
    (gateway/server.py), in one process or under uvicorn's supervisor for several."""
    import uvicorn

    from tallygate.gateway.guarded_http import GuardedConfig
    from tallygate.gateway.server import GatewayServer, GatewaySupervisor

    common: dict[str, Any] = dict(
        factory=True, workers=workers, loop="uvloop", lifespan="on", log_level=log_level,
        log_config=log_config(log_level), access_log=False,
        # Nothing reads X-Forwarded-*: the client address is the TCP peer (the auth
        # throttle keys on it); and no `server: uvicorn` header on every response.
        proxy_headers=False, server_header=False)
    app = "tallygate.cli.serve:app_from_env"
    config = (uvicorn.Config(app, http="httptools", **common) if plain
              else GuardedConfig(app, guards=guards, **common))
    server = GatewayServer(config, deadline=deadline)
    if workers > 1:  # each worker process runs a GatewayServer too
        GatewaySupervisor(config, sockets=[sock]).run()
        return
    server.run(sockets=[sock])
    if not server.started:  # the lifespan failed: uvicorn said why on stderr
        raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        config: Annotated[Path | None, typer.Option(help="Policy file (tallygate.yaml).")] = None,
        host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
        port: Annotated[int | None, typer.Option(help="Port.")] = None,
        workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
        log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
        access_log: Annotated[str | None, typer.Option(
            "--access-log", help="Write one JSON line per call to FILE ('-' = stdout).")]
        = None,
    ) -> None:
        """Run the OpenAI- and Anthropic-compatible gateway."""
        from dataclasses import replace

        from tallygate.cli.listen import bind
        from tallygate.config import DEFAULT_PATH, load_policy
        from tallygate.gateway.guarded_http import Guards

        policy = load_policy(config)  # validate before binding or forking workers
        check_serveable(policy, workers)
        if access_log and access_log != "-":
            access_log = str(Path(access_log).resolve())
            try:
                Path(access_log).open("ab").close()
            except OSError as exc:
                raise ConfigError(f"--access-log {access_log}: {exc.strerror}") from None
        server = policy.server
        cap, cap_note = connection_cap(server.max_connections)
        guards = replace(Guards(), header_timeout=server.header_timeout,
                         body_timeout=server.body_timeout, idle_timeout=server.idle_timeout,
                         max_connections=cap, max_header_bytes=server.max_header_bytes)
        sock = bind(host or server.host, server.port if port is None else port)
        if config is not None:
            os.environ[CONFIG_ENV] = str(config.resolve())
            source = str(config.resolve())
        else:
            found = Path(DEFAULT_PATH)
            source = str(found.resolve()) if found.is_file() else "built-in defaults"
        os.environ[WORKERS_ENV] = str(workers)
        check_state_free(policy, workers)
        if access_log:
            os.environ[ACCESS_LOG_ENV] = access_log
        block = startup_block(policy, source, sock, workers, guards, cap_note, access_log,
                              state_warning(policy.storage.state))
        typer.echo(block, err=access_log == "-")
        _run(sock, workers, log_level, guards, plain=server.http == "uvicorn",
             deadline=server.shutdown_deadline)


def check_state_free(policy: object, workers: int) -> None:
    """Several workers share a SQLite state file: refuse to start (instead of answering
    every call 429) while another process owns it."""
    from tallygate.config import Policy
    from tallygate.errors import ConfigError, StoreUnavailable
    from tallygate.state.file_lock import release, take_sharer

    assert isinstance(policy, Policy)
    url = policy.storage.state
    if workers <= 1 or not url.startswith("sqlite:///") or url.endswith(":memory:"):
        return
    path = url.removeprefix("sqlite:///")
    if not Path(path).exists():
        return
    try:
        release(take_sharer(path))
    except StoreUnavailable as exc:
        raise ConfigError(exc.message) from None
