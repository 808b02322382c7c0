"""What a `tallygate gen` run did, for people (a table and one line) and for the
pipeline (the JSON summary file)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tallygate.ci.gen import PieceResult
from tallygate.ci.plan import Plan
from tallygate.units import dollars


@dataclass(frozen=True, slots=True)
class GenRun:
    spec: str
    out: str
    run: str | None
    feature: str
    cache: str  # where the cache is, or why it is off
    dry_run: bool
    plan: Plan
    results: list[PieceResult]
    tampered: int = 0  # cache entries refused by the signature check (then regenerated)


def totals(results: list[PieceResult]) -> dict[str, Any]:
    done = [r for r in results if r.called]
    hits = [r for r in results if r.status == "cached"]
    return {
        "pieces": len(results),
        "calls": len(done),
        "generated": sum(r.status == "generated" for r in results),
        "cache_hits": len(hits),
        "failed": sum(r.status == "failed" for r in results),
        "skipped": sum(r.status == "skipped" for r in results),
        "input_tokens": sum(r.usage.input_tokens for r in done),
        "output_tokens": sum(r.usage.output_tokens for r in done),
        "tokens": sum(r.usage.total_tokens for r in done),
        "cost_usd": dollars(sum(r.cost_nusd for r in done)),
        "saved_tokens": sum(r.saved.total_tokens for r in hits),
        "saved_usd": dollars(sum(r.saved_nusd for r in hits)),
    }


def summary_json(run: GenRun) -> dict[str, Any]:
    return {
        "spec": run.spec, "out": run.out, "run": run.run, "feature": run.feature,
        "model": run.plan.model.name, "protocol": run.plan.protocol,
        "max_output": run.plan.max_output, "input_budget": run.plan.input_budget,
        "cache": run.cache, "dry_run": run.dry_run, "cache_entries_refused": run.tampered,
        **totals(run.results),
        "chunks": [{
            "name": r.chunk.name, "piece": r.chunk.piece, "part": r.chunk.part,
            "parts": r.chunk.parts, "status": r.status, "key": r.chunk.key,
            "planned_input_tokens": r.chunk.input_tokens,
            "input_tokens": r.usage.input_tokens, "output_tokens": r.usage.output_tokens,
            "cost_usd": dollars(r.cost_nusd), "saved_tokens": r.saved.total_tokens,
            "file": r.file, "error": r.error,
        } for r in run.results],
    }


def verdict_line(run: GenRun) -> str:
    t = totals(run.results)
    if run.dry_run:
        return (f"gen (dry run): {t['pieces']} chunks, {t['cache_hits']} cached, "
                f"{t['pieces'] - t['cache_hits']} to generate with {run.plan.model.name}")
    line = (f"gen: {t['pieces']} chunks: {t['calls']} calls, {t['tokens']:,} tokens "
            f"(${t['cost_usd']}), {t['cache_hits']} cache hits, {t['saved_tokens']:,} tokens "
            f"saved (${t['saved_usd']})")
    if t["failed"] or t["skipped"]:
        line += f"; {t['failed']} failed, {t['skipped']} skipped"
    return line


def print_run(run: GenRun) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    title = f"{run.spec} → {run.out} ({run.plan.model.name}, cache: {run.cache})"
    table = Table(title=escape(title))
    for col in ("chunk", "input", "output", "status", "file"):
        table.add_column(col, justify="right" if col in ("input", "output") else "left")
    for r in run.results:
        tokens_in = r.usage.input_tokens if r.called else r.chunk.input_tokens
        out = f"{r.usage.output_tokens:,}" if r.called else (
            f"saved {r.saved.total_tokens:,}" if r.status == "cached" else "")
        status = r.status if r.status != "failed" else "[red]failed[/red]"
        table.add_row(escape(r.chunk.name), f"{tokens_in:,}", out, status,
                      escape(r.file or ""))
    console = Console(highlight=False, width=max(100, Console().width))
    console.print(table)
    for r in run.results:
        if r.error and r.status == "failed":
            console.print(escape(f"FAILED: {r.chunk.name}: {r.error}"), soft_wrap=True)
    if run.tampered:
        then = "would be regenerated" if run.dry_run else "regenerated"
        console.print(f"{run.tampered} cache entries failed the signature check "
                      f"(tampered or foreign): {then}")
    console.print(escape(verdict_line(run)), soft_wrap=True)
