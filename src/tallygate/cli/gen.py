"""`tallygate gen SPEC --out DIR`: spec-driven generation for pipelines (ci/gen.py).
Exit 0 when every chunk was generated or came from the cache, 1 when one failed or was
skipped, 2 on a usage or configuration error."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tallygate.errors import InvalidRequest

if TYPE_CHECKING:
    from tallygate.ci.artifacts import ArtifactCache
    from tallygate.ci.gen import GenOptions, PieceResult
    from tallygate.ci.plan import Plan
    from tallygate.ci.spec import Spec
    from tallygate.config import Policy

DEFAULT_FEATURE = "gen"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_MAX_OUTPUT = 1024
DEFAULT_CACHE = ".tallygate-cache"
SUMMARY_NAME = "tallygate-gen.json"
MAX_NAME = 256


def _name(value: str, what: str) -> str:
    if not value or len(value) > MAX_NAME or any(ord(c) < 32 for c in value):
        raise InvalidRequest(f"{what} must be 1–{MAX_NAME} printable characters")
    return value


def _schema(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"--schema {path}: cannot read a JSON Schema ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"--schema {path}: a JSON Schema is an object")
    return data


def _run_id(run: str | None) -> str:
    """--run, else the CI job (GITHUB_RUN_ID), else one id for this invocation."""
    found = run or os.environ.get("GITHUB_RUN_ID")
    return _name(found, "--run") if found else time.strftime("gen-%Y%m%dT%H%M%SZ", time.gmtime())


def _plan(policy: Policy, spec: Spec, feature: str, model: str | None,
          max_output: int | None) -> Plan:
    from tallygate.ci.gen import protocol_of
    from tallygate.ci.plan import build_plan
    from tallygate.core import decide
    from tallygate.core.catalog import Catalog

    settings = policy.feature(feature)
    requested = model or spec.model or (None if settings.model else DEFAULT_MODEL)
    name = decide.resolve_model(requested, feature=feature, step=None, policy=policy)
    info = Catalog(policy.models).get(name)
    cap = max_output or spec.max_output or settings.max_output or DEFAULT_MAX_OUTPUT
    return build_plan(spec, protocol_of(policy, info.provider), info, cap,
                      None if settings.max_input is None else int(settings.max_input))


async def _execute(plan: Plan, policy: Policy, options: GenOptions,
                   cache: ArtifactCache | None, dry: bool) -> list[PieceResult]:
    from tallygate.ci.gen import Generator, dry_run

    try:
        if dry:
            return await dry_run(plan, cache)
        return await Generator(plan, policy, options, cache).run()
    finally:
        if cache is not None:
            await cache.close()


def gen_cmd(
    spec: Annotated[Path, typer.Argument(help="The spec: YAML, JSON or Markdown.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the artifacts.")],
    config: Annotated[Path | None, typer.Option(
        "--config", help="Policy file (default ./tallygate.yaml).")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Model (default: the spec's, else the feature's).")] = None,
    feature: Annotated[str | None, typer.Option(
        "--feature", help="Feature whose budgets apply (default: the spec's, else gen).")
    ] = None,
    user: Annotated[str, typer.Option("--user", help="User the calls are charged to.")] = "ci",
    run: Annotated[str | None, typer.Option(
        "--run", help="Run id for the ledger (default $GITHUB_RUN_ID).")] = None,
    max_output: Annotated[int | None, typer.Option(
        "--max-output", min=1, help="Output tokens per chunk (default: the spec's, the "
                                    "feature's max_output, else 1024).")] = None,
    schema: Annotated[Path | None, typer.Option(
        "--schema", help="JSON Schema file for every answer (overrides the spec's).")] = None,
    cache: Annotated[str, typer.Option(
        "--cache", help="DIR, `policy` (the policy's cache backend), a backend URL, or "
                        "`none`.")] = DEFAULT_CACHE,
    cache_ttl: Annotated[str, typer.Option(
        "--cache-ttl", help="How long an artifact stays valid: 30d, 12h …")] = "30d",
    refresh: Annotated[bool, typer.Option(
        "--refresh", help="Regenerate every chunk, overwriting its cache entry.")] = False,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", min=1, max=32, help="Chunks in flight at once.")] = 4,
    retries: Annotated[int | None, typer.Option(
        "--retries", min=0, max=10, help="SDK retries on 429/5xx (default: the feature's "
                                         "retries).")] = None,
    summary: Annotated[Path | None, typer.Option(
        "--summary", help=f"Write the JSON summary here (default OUT/{SUMMARY_NAME}).")
    ] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Show the chunks, their counts and what is cached; call "
                          "nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Generate artifacts from a spec: chunked to fit the model, structured by its JSON
    Schema, governed by the policy, cached by the SHA-256 of each request."""
    from tallygate.ci import gen_report
    from tallygate.ci.artifacts import open_artifact_cache
    from tallygate.ci.gen import GenOptions
    from tallygate.ci.spec import load_spec
    from tallygate.config import load_policy, parse_duration

    policy = load_policy(config)
    doc = load_spec(spec)
    extra = _schema(schema)
    if extra is not None:
        doc = dataclasses.replace(doc, schema=extra, pieces=tuple(
            dataclasses.replace(p, schema=None) for p in doc.pieces))
    name = _name(feature if feature is not None else doc.feature or DEFAULT_FEATURE,
                 "--feature")
    plan = _plan(policy, doc, name, model, max_output)
    try:
        ttl = parse_duration(cache_ttl)
    except ValueError as exc:
        raise InvalidRequest(f"--cache-ttl {cache_ttl!r}: {exc}") from None
    store, where = open_artifact_cache(cache, policy, ttl)
    options = GenOptions(out=out, feature=name, user=_name(user, "--user"),
                         run=_run_id(run), concurrency=concurrency, refresh=refresh,
                         retries=policy.feature(name).retries if retries is None else retries)
    results = asyncio.run(_execute(plan, policy, options, store, dry_run))
    report = gen_report.GenRun(str(spec), str(out), None if dry_run else options.run, name,
                               where, dry_run, plan, results,
                               store.tampered if store is not None else 0)
    data = gen_report.summary_json(report)
    target = summary or (None if dry_run else out / SUMMARY_NAME)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        gen_report.print_run(report)
    if any(r.status in ("failed", "skipped") for r in results):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    from tallygate.cli.text import guard

    app.command("gen")(guard(gen_cmd))
