"""`tallygate reload --url URL`: a running gateway re-reads its policy file (its
`POST /admin/reload`; every replica on the same state store follows). Sending the
process SIGHUP does the same for one gateway."""

from __future__ import annotations

import json

import typer

from tallygate.cli.keys import AdminKeyOpt, Target, UrlOpt


def register(app: typer.Typer) -> None:
    @app.command()
    def reload(url: UrlOpt = None, admin_key: AdminKeyOpt = None) -> None:
        """Reload a running gateway's policy file (validated in full; a bad file keeps
        the running policy and says why)."""
        if not url:
            raise typer.BadParameter("give the gateway's --url", param_hint="--url")
        done = Target(None, None, url, admin_key).call("POST", "/admin/reload")
        typer.echo(json.dumps(done))
