"""`tallygate check`: every `check.budgets` entry's files counted, against their limits
and, with a baseline commit, against their size there.

An entry's limits: `max_tokens`; `feature` (that feature's `max_input`, the number the
gateway enforces on the same file sent as a request); `max_cost_usd` (the tokens priced
as input to the entry's model); `max_growth` (percent over the baseline's count). They
bind each file (`per: file`) or the entry's total (`per: entry`). An entry whose glob
matches no file fails: a typo in a glob must not pass the gate silently."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from tallygate.ci import globs
from tallygate.ci.gitref import GitTree
from tallygate.ci.sources import count_bytes, is_binary
from tallygate.config import CheckBudget, CheckSection, Policy
from tallygate.core import decide
from tallygate.core.catalog import Catalog
from tallygate.errors import ConfigError, InputTooLarge, TallygateError
from tallygate.types import ModelInfo, Usage
from tallygate.units import dollars

DEFAULT_MODEL = "gpt-4o"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one entry enforces, resolved against the policy."""

    model: ModelInfo
    tokens: tuple[tuple[str, int], ...]  # (what, limit): max_tokens, features.X.max_input
    cost_nusd: int | None
    max_growth: Decimal | None
    per: str


@dataclass(slots=True)
class FileResult:
    path: str  # relative to the section's base directory
    kind: str = "text"
    tokens: int = 0
    exact: bool = True
    cost_nusd: int = 0
    old_tokens: int | None = None  # at the baseline commit; None: not there (or no baseline)
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None  # why it was not counted (binary)

    @property
    def delta(self) -> int | None:
        return None if self.old_tokens is None else self.tokens - self.old_tokens


@dataclass(slots=True)
class EntryResult:
    index: int
    budget: CheckBudget
    limits: Limits
    files: list[FileResult] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # matched at the baseline only
    problems: list[str] = field(default_factory=list)  # entry-level (per: entry, no files)
    old_total: int | None = None

    @property
    def label(self) -> str:
        return self.budget.label

    @property
    def counted(self) -> list[FileResult]:
        return [f for f in self.files if f.skipped is None]

    @property
    def total_tokens(self) -> int:
        return sum(f.tokens for f in self.counted)

    @property
    def total_cost_nusd(self) -> int:
        return self.limits.model.cost_nusd(Usage(input_tokens=self.total_tokens))

    @property
    def failed(self) -> bool:
        return bool(self.problems) or any(f.problems for f in self.files)


@dataclass(slots=True)
class CheckReport:
    source: str  # the file the budgets come from (or "--budget")
    base: Path
    entries: list[EntryResult]
    compare_to: str | None = None

    @property
    def failed(self) -> bool:
        return any(e.failed for e in self.entries)

    def breaches(self) -> list[tuple[EntryResult, FileResult | None, str]]:
        """Every problem: (entry, the file or None for the entry itself, message)."""
        out: list[tuple[EntryResult, FileResult | None, str]] = []
        for entry in self.entries:
            out += [(entry, None, p) for p in entry.problems]
            out += [(entry, f, p) for f in entry.files for p in f.problems]
        return out


# ---------------------------------------------------------------- resolving limits


def resolve_limits(budget: CheckBudget, where: str, section: CheckSection, policy: Policy,
                   catalog: Catalog, source: str) -> Limits:
    """The entry's model and limits; ConfigError for an entry with no limit, or a feature
    the policy does not have."""
    growth = budget.max_growth if budget.max_growth is not None else section.max_growth
    if (budget.max_tokens is None and budget.max_cost_usd is None and budget.feature is None
            and growth is None):
        raise ConfigError(f"{source}: {where}: give max_tokens, max_cost_usd, feature or "
                          "max_growth")
    tokens: list[tuple[str, int]] = []
    if budget.max_tokens is not None:
        tokens.append(("max_tokens", budget.max_tokens))
    if budget.feature is not None:
        tokens.append((f"features.{budget.feature}.max_input",
                       _max_input(budget.feature, where, policy, source)))
    try:
        if budget.model or (budget.feature is None and section.model):
            name = decide.resolve_model(budget.model or section.model, feature=None,
                                         step=None, policy=policy)
        elif budget.feature is not None and policy.feature(budget.feature).model:
            name = decide.resolve_model(None, feature=budget.feature, step=None,
                                         policy=policy)
        else:
            name = section.model or DEFAULT_MODEL
        model = catalog.get(name)
    except TallygateError as exc:
        raise ConfigError(f"{source}: {where}.model: {exc.message}") from None
    return Limits(model, tuple(tokens), budget.max_cost_usd, growth, budget.per)


def _max_input(feature: str, where: str, policy: Policy, source: str) -> int:
    found = policy.features.get(feature)
    if found is None:
        hint = difflib.get_close_matches(feature, list(policy.features), n=1)
        guess = f" (did you mean {hint[0]!r}?)" if hint else ""
        known = ", ".join(sorted(policy.features)) or "none"
        raise ConfigError(f"{source}: {where}.feature: no feature {feature!r} in the "
                          f"policy{guess}; features: {known}")
    if found.max_input is None:
        raise ConfigError(f"{source}: {where}.feature: feature {feature!r} has no max_input "
                          f"to check against (set features.{feature}.max_input)")
    return int(found.max_input)


# ---------------------------------------------------------------- checking


Reader = Callable[[str], bytes]


def _count(result: FileResult, raw: bytes, limits: Limits, max_chars: int) -> None:
    if is_binary(raw):
        result.skipped = "binary"
        return
    try:
        counted = count_bytes(raw, limits.model, max_chars=max_chars)
    except TallygateError as exc:
        result.problems.append(f"cannot be counted: {exc.message}")
        return
    result.kind, result.tokens, result.exact = counted.kind, counted.tokens, counted.exact
    result.cost_nusd = limits.model.cost_nusd(Usage(input_tokens=counted.tokens))


def _old_tokens(raw: bytes | None, limits: Limits, max_chars: int) -> int | None:
    if raw is None or is_binary(raw):
        return None
    try:
        return count_bytes(raw, limits.model, max_chars=max_chars).tokens
    except TallygateError:
        return None


def over_limits(tokens: int, cost_nusd: int, limits: Limits) -> list[str]:
    """The messages of every token or cost limit that `tokens` breaks."""
    out = [f"{tokens:,} tokens, over {what} {limit:,} by {tokens - limit:,}"
           for what, limit in limits.tokens if tokens > limit]
    if limits.cost_nusd is not None and cost_nusd > limits.cost_nusd:
        out.append(f"${dollars(cost_nusd)} as {limits.model.name} input, over max_cost_usd "
                   f"${dollars(limits.cost_nusd)}")
    return out


def growth_problem(old: int | None, new: int, limits: Limits) -> str | None:
    """A message when `new` grew from `old` by more than max_growth percent (exact
    arithmetic: growth% > max is new·100 > old·(100 + max))."""
    if limits.max_growth is None or not old or new <= old:
        return None
    if Decimal(new) * 100 <= Decimal(old) * (100 + limits.max_growth):
        return None
    return (f"grew {growth_pct(old, new).lstrip('+')}% ({old:,} → {new:,} tokens), over max_growth "
            f"{_plain(limits.max_growth)}%")


def growth_pct(old: int, new: int) -> str:
    return f"{Decimal(new - old) * 100 / Decimal(old):+.1f}"


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


def read_capped(base: Path, max_chars: int) -> Reader:
    """A reader of files under `base` that never loads more than the counting cap can
    count (4 UTF-8 bytes a character): a larger file is reported, not read whole."""
    cap = max_chars * 4

    def read(path: str) -> bytes:
        with (base / path).open("rb") as handle:
            data = handle.read(cap + 1)
        if len(data) > cap:
            raise InputTooLarge(f"over {cap:,} bytes, more than the counting cap of "
                                f"{max_chars:,} characters", chars=cap + 1, cap=max_chars)
        return data

    return read


def check_entry(entry: EntryResult, paths: list[str], read: Reader, max_chars: int,
                baseline: Mapping[str, bytes] | None) -> None:
    """Count the entry's files and record every problem on them or on the entry."""
    limits = entry.limits
    for path in paths:
        result = FileResult(path)
        try:
            raw = read(path)
        except InputTooLarge as exc:
            result.problems.append(f"cannot be counted: {exc.message}")
            entry.files.append(result)
            continue
        _count(result, raw, limits, max_chars)
        if baseline is not None and result.skipped is None:
            result.old_tokens = _old_tokens(baseline.get(path), limits, max_chars)
        entry.files.append(result)
    if not paths:
        entry.problems.append(f"the glob {entry.budget.path!r} matches no files")
        return
    if baseline is not None:
        old = [_old_tokens(baseline.get(p), limits, max_chars)
               for p in [*(f.path for f in entry.counted), *entry.removed]]
        entry.old_total = sum(n for n in old if n is not None) if any(
            n is not None for n in old) else None
    if limits.per == "file":
        for result in entry.counted:
            if result.problems:
                continue
            result.problems += over_limits(result.tokens, result.cost_nusd, limits)
            grew = growth_problem(result.old_tokens, result.tokens, limits)
            if grew:
                result.problems.append(grew)
        return
    total = entry.total_tokens
    entry.problems += [f"the entry's {len(entry.counted)} files total " + p
                       for p in over_limits(total, entry.total_cost_nusd, limits)]
    grew = growth_problem(entry.old_total, total, limits)
    if grew:
        entry.problems.append(f"the entry's total {grew}")


def run_check(section: CheckSection, policy: Policy, base: Path, source: str, *,
              compare_to: str | None = None) -> CheckReport:
    """Check every entry of `section`, globs relative to `base`."""
    catalog = Catalog(policy.models)
    tree = GitTree(base, compare_to) if compare_to else None
    old_files = tree.files() if tree is not None else []
    report = CheckReport(source, base, [], compare_to)
    plans: list[tuple[EntryResult, list[str]]] = []
    for i, budget in enumerate(section.budgets):
        where = f"check.budgets[{i}]"
        limits = resolve_limits(budget, where, section, policy, catalog, source)
        try:
            paths = globs.walk(base, budget.path)
            before = [p for p in old_files if globs.matches(budget.path, p)]
        except TallygateError as exc:
            raise ConfigError(f"{source}: {where}.path: {exc.message}") from None
        entry = EntryResult(i, budget, limits, removed=sorted(set(before) - set(paths)))
        plans.append((entry, paths))
    baseline = None
    if tree is not None:
        wanted = sorted({p for e, paths in plans for p in [*paths, *e.removed]})
        baseline = tree.read(wanted)
    for entry, paths in plans:
        check_entry(entry, paths, read_capped(base, policy.server.max_chars),
                    policy.server.max_chars, baseline)
        report.entries.append(entry)
    return report


def adhoc_section(budget: int, model: str, max_growth: Decimal | None) -> CheckSection:
    """`check PATHS --budget N`: one entry; its files are the walked paths."""
    return CheckSection(model=model, max_growth=max_growth,
                        budgets=(CheckBudget(path="*", name="--budget", max_tokens=budget),))


def run_adhoc(files: list[str], section: CheckSection, policy: Policy, base: Path,
              compare_to: str | None = None) -> CheckReport:
    """Check explicit files (the `--budget` form, paths as given) against the section's
    single entry; with a baseline, files outside `base` have no old count."""
    catalog = Catalog(policy.models)
    budget = section.budgets[0]
    limits = resolve_limits(budget, "--budget", section, policy, catalog, "--budget")
    entry = EntryResult(0, budget, limits)
    baseline = None
    if compare_to:
        inside = {p: _relative(p, base) for p in files}
        found = GitTree(base, compare_to).read(sorted({r for r in inside.values() if r}))
        baseline = {p: found[r] for p, r in inside.items() if r in found}
    check_entry(entry, files, read_capped(base, policy.server.max_chars),
                policy.server.max_chars, baseline)
    return CheckReport("--budget", base, [entry], compare_to)


def _relative(path: str, base: Path) -> str | None:
    try:
        return (base / path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return None
