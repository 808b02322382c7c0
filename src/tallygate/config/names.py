"""Every name an operator types, checked in one place: plans, features, models, tiers,
routing targets, limit scopes, flag names and key allow-lists.

The CLI (`keys create`, `flags set|clear`), the admin API and the policy loader all ask
`PolicyNames`, so a typo is refused the same way at every door, with "did you mean".
A near-miss is never accepted: a misspelt limit scope would silently limit nothing."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Protocol

from tallygate.core.catalog import Catalog, default_catalog
from tallygate.errors import InvalidRequest


class PolicyModel(Protocol):
    """The parts of the policy (config/models.py) whose names are checked here."""

    @property
    def plans(self) -> Mapping[str, Any]: ...
    @property
    def features(self) -> Mapping[str, Any]: ...
    @property
    def tiers(self) -> Mapping[str, str]: ...
    @property
    def models(self) -> Mapping[str, Any]: ...
    @property
    def flags(self) -> Mapping[str, bool]: ...
    @property
    def routing(self) -> Any: ...
    @property
    def limits(self) -> Any: ...

DEFAULT = "default"  # the feature / plan / model name that stands for every other
TIER_PREFIX = "tier:"
AUTO = "auto"
_SHOWN = 12  # known names listed in a message, at most


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for a close match, else an empty string."""
    found = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {found[0]!r}?)" if found else ""


def unknown(kind: str, name: str, known: Collection[str]) -> str:
    """One line naming the unknown value, the closest known one and the known ones."""
    shown = sorted(known)
    listing = ", ".join(shown[:_SHOWN]) + (", …" if len(shown) > _SHOWN else "")
    return (f"unknown {kind} {name[:128]!r}{did_you_mean(name, known)}; "
            f"known {kind}s: {listing or 'none'}")


class PolicyNames:
    """The names a policy (and the model catalog) knows, and the checks against them."""

    def __init__(self, policy: PolicyModel, catalog: Catalog | None = None) -> None:
        self.catalog = catalog or default_catalog()
        self.plans = frozenset(policy.plans)
        self.features = frozenset({*policy.features, DEFAULT})
        self.tiers = frozenset(policy.tiers)
        self.configured_models = frozenset(policy.models)

    # -- single names ---------------------------------------------------------------

    def plan_problem(self, name: str) -> str | None:
        return None if name in self.plans else unknown("plan", name, self.plans)

    def feature_problem(self, name: str) -> str | None:
        return None if name in self.features else unknown("feature", name, self.features)

    def is_model(self, name: str) -> bool:
        """A model configured under `models:` or known to the catalog."""
        return name in self.configured_models or self.catalog.find(name) is not None

    def model_problem(self, name: str) -> str | None:
        """A model name, `tier:NAME` or `auto` as a request may write it."""
        if name == AUTO:
            return None
        if name.startswith(TIER_PREFIX):
            tier = name[len(TIER_PREFIX):]
            return None if tier in self.tiers else unknown("tier", tier, self.tiers)
        if self.is_model(name):
            return None
        known = {*self.configured_models, *self.catalog.suggestions(name)}
        return (f"unknown model {name[:128]!r}{did_you_mean(name, known)} "
                "(neither in `models:` nor in the model catalog)")

    def route_problem(self, target: str) -> str | None:
        """A routing target: a tier name, `tier:NAME`, or a model."""
        if target in self.tiers:
            return None
        if target.startswith(TIER_PREFIX) or self.is_model(target):
            return self.model_problem(target)
        known = {*self.tiers, *self.configured_models, *self.catalog.suggestions(target)}
        return (f"unknown tier or model {target[:128]!r}{did_you_mean(target, known)}; "
                f"tiers: {', '.join(sorted(self.tiers)) or 'none'}")

    # -- allow-lists ------------------------------------------------------------------

    def feature_pattern_problem(self, pattern: str) -> str | None:
        if "*" in pattern:
            if any(fnmatch.fnmatchcase(f, pattern) for f in self.features):
                return None
            return f"feature pattern {pattern[:128]!r} matches no configured feature"
        return self.feature_problem(pattern)

    def model_pattern_problem(self, pattern: str) -> str | None:
        if "*" in pattern:
            names = [*self.configured_models, *self.catalog.names()]
            if any(fnmatch.fnmatchcase(m, pattern) for m in names):
                return None
            return f"model pattern {pattern[:128]!r} matches no known model"
        if pattern.startswith(TIER_PREFIX) or pattern == AUTO:
            return f"an allow-list names models, not {pattern[:128]!r}"
        return self.model_problem(pattern)

    # -- what the doors call ----------------------------------------------------------

    def check_key(self, *, plan: str, features: Iterable[str] = (),
                  models: Iterable[str] = ()) -> None:
        """InvalidRequest (param = the field) unless every name of a new key is known."""
        checks = [("plan", plan, self.plan_problem)]
        checks += [("features", f, self.feature_pattern_problem) for f in features]
        checks += [("models", m, self.model_pattern_problem) for m in models]
        for param, value, check in checks:
            problem = check(value)
            if problem is not None:
                raise InvalidRequest(_sentence(problem), param=param)

    def check_flag(self, name: str) -> str:
        """The flag's name when it is a feature of the policy, else InvalidRequest."""
        problem = self.feature_problem(name)
        if problem is not None:
            raise InvalidRequest(_sentence(problem), param="feature")
        return name


def _sentence(problem: str) -> str:
    return problem[0].upper() + problem[1:] + "."


def policy_problems(policy: PolicyModel, catalog: Catalog | None = None) -> list[str]:
    """Every name in the policy that refers to nothing, as `path: problem` lines."""
    names = PolicyNames(policy, catalog)
    found = [*_model_references(policy, names), *_scope_references(policy, names)]
    return [f"{path}: {problem}" for path, problem in found if problem is not None]


Found = list[tuple[str, str | None]]


def _model_references(policy: PolicyModel, names: PolicyNames) -> Found:
    out: Found = [(f"tiers.{t}", names.model_problem(m)) for t, m in policy.tiers.items()]
    out += [(f"routing.steps.{step}", names.route_problem(target))
            for step, target in policy.routing.steps.items()]
    for name, feature in policy.features.items():
        for key, model in (("model", feature.model),
                           ("summarize_model", feature.summarize_model)):
            if model is not None:
                out.append((f"features.{name}.{key}", names.model_problem(model)))
        out += [(f"features.{name}.fallbacks[{i}]", names.model_problem(model))
                for i, model in enumerate(feature.fallbacks)]
    return out


def _scope_references(policy: PolicyModel, names: PolicyNames) -> Found:
    plans = {*policy.plans, DEFAULT}
    out: Found = [(f"limits.plan.{name}", unknown("plan", name, plans))
                  for name in policy.limits.plan if name not in plans]
    out += [(f"limits.feature.{name}", names.feature_problem(name))
            for name in policy.limits.feature]
    out += [(f"limits.model.{name}", names.model_problem(name))
            for name in policy.limits.model if name != DEFAULT]
    out += [(f"flags.{name}", names.feature_problem(name)) for name in policy.flags]
    return out
