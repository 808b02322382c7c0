"""`tallygate dashboard --config FILE`: serve `/dashboard` over the policy's ledger, key
store and state store without a gateway (after a CI job, or beside gateways that run
elsewhere on the same PostgreSQL / Redis)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_PORT = 8090


def build_app(config: Path | None) -> object:
    """A Starlette app serving only the dashboard; its stores open in the lifespan."""
    from starlette.applications import Starlette
    from starlette.responses import RedirectResponse
    from starlette.routing import Route

    from tallygate.config import load_policy
    from tallygate.dashboard.app import Dashboard
    from tallygate.dashboard.sources import open_sources

    policy = load_policy(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        dashboard = Dashboard(await open_sources(policy))
        app.router.routes.extend(dashboard.routes())
        try:
            yield
        finally:
            await dashboard.close()

    async def root(request: object) -> RedirectResponse:
        del request
        return RedirectResponse("/dashboard", status_code=303)

    return Starlette(routes=[Route("/", root)], lifespan=lifespan)


def register(app: typer.Typer) -> None:
    @app.command()
    def dashboard(
        config: Annotated[Path | None, typer.Option(help="Policy file (tallygate.yaml).")] = None,
        host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port.")] = DEFAULT_PORT,
        log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    ) -> None:
        """Serve the web dashboard over the configured storage, without a gateway."""
        import uvicorn

        from tallygate.config import load_policy
        from tallygate.errors import ConfigError

        policy = load_policy(config)
        if policy.admin_key is None:
            raise ConfigError("the dashboard signs in with the admin key: set "
                              "TALLYGATE_ADMIN_KEY (or admin_key in the policy)")
        typer.echo(f"tallygate dashboard on http://{host}:{port}/dashboard")
        uvicorn.run(build_app(config), host=host, port=port, lifespan="on",
                    log_level=log_level, access_log=False, server_header=False)
