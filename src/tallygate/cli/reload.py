"""`tallygate reload --url URL`: a running gateway re-reads its policy file (its
`POST /admin/reload`; every replica on the same state store follows). Sending the
process SIGHUP does the same for one gateway."""

from __future__ import annotations

import json
import sys

import typer

from tallygate.cli.keys import AdminKeyOpt, Target, UrlOpt


def register(app: typer.Typer) -> None:
    @app.command()
    def reload(url: UrlOpt = None, admin_key: AdminKeyOpt = None) -> None:
        """Reload a running gateway's policy file (validated in full; a bad file keeps
        the running policy and says why)."""
        if not url:
            print("tallygate: error: reload: give the running gateway's --url (or send "
                  "the process SIGHUP)", file=sys.stderr)
            raise typer.Exit(2)
        done = Target(None, None, url, admin_key).call("POST", "/admin/reload")
        typer.echo(json.dumps(done))
