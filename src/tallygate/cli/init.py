"""`tallygate init`: write a commented starter `tallygate.yaml` that `serve` accepts as
is. Providers come from the environment: one whose key variable is set is written
active (the file names the variable, never its value); the others are written as
comments to uncomment later."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer

from tallygate.errors import ConfigError

PROVIDERS = {  # name → (protocol, key variable, base-URL variable, default base URL)
    "openai": ("openai", "OPENAI_API_KEY", "OPENAI_BASE_URL", "https://api.openai.com/v1"),
    "anthropic": ("anthropic", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL",
                  "https://api.anthropic.com"),
}
TIERS = {"openai": ("gpt-4o-mini", "gpt-4o", "gpt-4.1"),
         "anthropic": ("claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-1")}

HEAD = """\
# tallygate policy, written by `tallygate init`. Every key: docs/policy.md.
# Secrets stay in the environment: `${VAR}` is read when a call needs it, and offline
# commands (count, check, report, keys …) never do. A typo in any name is an error.

storage:
  state: sqlite:///tallygate.db    # memory:// | sqlite:///PATH | redis://HOST:PORT/DB
  ledger: sqlite:///tallygate.db   # sqlite:///PATH | postgresql://USER@HOST:PORT/DB
"""

BODY = """
# What a call may use. `default` applies to calls without X-Tallygate-Feature, and to
# feature names not listed here (unknown_features: default; or `reject` to refuse them).
features:
  default: {{max_output: 4096, on_exceed: reject}}
  # chat: {{max_input: 8000, max_output: 1000, model: {small}, on_exceed: trim}}
  # summarize: {{max_input: 16000, max_output: 500, model: {small}}}
unknown_features: default

# Per-user budgets: `tallygate keys create --user U --plan P` picks one.
plans:
  free: {{tokens_per_day: 10000}}
  pro: {{tokens_per_day: 100000}}
  enterprise: {{tokens_per_day: 1000000}}

# Limits on any scope: global, feature, plan, user, key, model, run; windows
# minute | hour | day | month, e.g. cost_usd_per_day: 25.
limits:
  global: {{tokens_per_minute: 1000000}}

# `model: tier:small`, or `model: auto` with an X-Tallygate-Step header.
tiers: {{small: {small}, medium: {medium}, large: {large}}}
routing:
  steps: {{planning: large, execution: medium, review: medium, verification: small}}

server:
  host: 127.0.0.1
  port: 8080
  # header_timeout: 10s   # request line and headers, from the first byte
  # body_timeout: 30s     # the whole body, after the headers
  # idle_timeout: 5s      # a kept-alive connection with no new request
  # max_connections: 1024 # per worker; beyond it: 503
  # max_header_bytes: 65536
  # auth_failures_per_minute: 20   # per client address, then 429 for the minute

# metrics:
#   token: ${{TALLYGATE_METRICS_TOKEN}}   # GET /metrics then needs this bearer token
"""


def provider_block(name: str, active: bool) -> str:
    protocol, key_var, url_var, url = PROVIDERS[name]
    lines = [f"{name}:", f"  protocol: {protocol}", f"  base_url: ${{{url_var}:-{url}}}",
             f"  api_key: ${{{key_var}}}"]
    prefix = "  " if active else "  # "
    return "\n".join(prefix + line for line in lines)


def starter_policy(env: Mapping[str, str]) -> tuple[str, list[str]]:
    """The file's text and the providers written active."""
    active = [name for name, spec in PROVIDERS.items() if env.get(spec[1])]
    blocks = [provider_block(name, name in active) for name in PROVIDERS]
    if active:
        providers = "\nproviders:\n" + "\n".join(blocks) + "\n"
    else:
        providers = ("\n# No provider key was set when this file was written: export\n"
                     "# OPENAI_API_KEY or ANTHROPIC_API_KEY and uncomment its provider.\n"
                     "providers: {}\n" + "\n".join(blocks) + "\n")
    small, medium, large = TIERS[active[0] if active else "openai"]
    return HEAD + providers + BODY.format(small=small, medium=medium, large=large), active


def register(app: typer.Typer) -> None:
    @app.command()
    def init(
        path: Annotated[Path, typer.Argument(help="Where to write the policy.")] = Path(
            "tallygate.yaml"),
        force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")]
        = False,
    ) -> None:
        """Write a commented starter policy (tallygate.yaml) that `serve` accepts as is."""
        from tallygate.config.policy import parse_policy

        if path.exists() and not force:
            raise ConfigError(f"{path} exists: keep it, or run `tallygate init --force`")
        text, active = starter_policy(os.environ)
        parse_policy(text, str(path))  # refuse to write what serve would not accept
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
        found = ", ".join(active) or "none (set OPENAI_API_KEY or ANTHROPIC_API_KEY)"
        typer.echo(f"wrote {path} (providers: {found})")
        typer.echo(f"next: tallygate serve --config {path}")
