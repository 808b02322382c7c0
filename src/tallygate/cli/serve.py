"""`tallygate serve`: run the gateway with uvicorn (uvloop + httptools)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

CONFIG_ENV = "TALLYGATE_CONFIG"
WORKERS_ENV = "TALLYGATE_WORKERS"  # set by `serve`: "1" lets state_mode auto own SQLite


def app_from_env() -> object:
    """uvicorn factory (one per worker process): the policy named by TALLYGATE_CONFIG."""
    from tallygate.config import load_policy
    from tallygate.gateway.app import create_app

    return create_app(load_policy(os.environ.get(CONFIG_ENV) or None),
                      sole_process=os.environ.get(WORKERS_ENV) == "1")


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        config: Annotated[Path | None, typer.Option(help="Policy file (tallygate.yaml).")] = None,
        host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
        port: Annotated[int | None, typer.Option(help="Port.")] = None,
        workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
        log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    ) -> None:
        """Run the OpenAI- and Anthropic-compatible gateway."""
        from tallygate.config import load_policy
        from tallygate.errors import ConfigError

        policy = load_policy(config)  # validate before forking workers
        if workers > 1 and policy.storage.state.startswith("memory://"):
            # Each worker process would keep its own counters: limits would not hold.
            raise ConfigError(
                "storage.state memory:// cannot be shared by several workers: use "
                "sqlite:///PATH (one machine) or redis:// (several machines), or --workers 1."
            )
        if workers > 1 and policy.storage.state_mode == "owner" and \
                policy.storage.state.startswith("sqlite:"):
            raise ConfigError(
                "storage.state_mode owner keeps the limits in one process: with several "
                "workers use state_mode shared (or auto), or --workers 1.")
        if config is not None:
            os.environ[CONFIG_ENV] = str(config.resolve())
        os.environ[WORKERS_ENV] = str(workers)
        bind_host = host or policy.server.host
        bind_port = policy.server.port if port is None else port
        check_state_free(policy, workers)
        typer.echo(f"tallygate gateway on http://{bind_host}:{bind_port} ({workers} worker(s))")
        run_server(bind_host, bind_port, workers, log_level,
                   deadline=policy.server.shutdown_deadline)


def run_server(host: str, port: int, workers: int, log_level: str, *,
               deadline: float) -> None:
    """uvicorn (uvloop + httptools) with the gateway's own way to stop (gateway/server.py),
    in one process or under uvicorn's supervisor for several workers."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from tallygate.gateway.server import GatewayServer

    config = uvicorn.Config(
        "tallygate.cli.serve:app_from_env", factory=True, host=host, port=port,
        workers=workers, loop="uvloop", http="httptools", lifespan="on",
        log_level=log_level, access_log=False,
        # Nothing reads the client address, so no X-Forwarded-* rewriting layer;
        # and no `server: uvicorn` header on every response.
        proxy_headers=False, server_header=False,
    )
    server = GatewayServer(config, deadline=deadline)
    if workers > 1:
        sock = config.bind_socket()
        Multiprocess(config, target=server.run, sockets=[sock]).run()
    else:
        server.run()


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
