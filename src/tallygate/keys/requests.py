"""What an operator may ask of the key store — a new key, a change to one — checked the
same way wherever it is asked: the admin API (`/admin/keys`) and the dashboard."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tallygate.config.names import PolicyNames, did_you_mean
from tallygate.errors import InvalidRequest
from tallygate.keys.model import check_expires_at, check_limits, check_names, check_text

LimitsValidator = Callable[[Mapping[str, Any]], object]
CREATE_FIELDS = frozenset({"user", "plan", "name", "features", "models", "limits",
                           "expires_at"})
UPDATE_FIELDS = frozenset({"plan", "name", "features", "models", "limits", "expires_at"})


def check_create(data: Mapping[str, Any], names: PolicyNames | None,
                 validate_limits: LimitsValidator | None) -> dict[str, Any]:
    """The fields of a new key, each checked, and its names against the policy's."""
    unknown = sorted(set(data) - CREATE_FIELDS)
    if unknown:
        name = unknown[0][:64]
        raise InvalidRequest(f"Unknown field {name!r}{did_you_mean(name, CREATE_FIELDS)}.",
                             param=name)
    limits = check_limits(data.get("limits"))
    if validate_limits is not None and limits:
        validate_limits(limits)
    fields = {
        "user": check_text(data.get("user"), "user"),
        "plan": check_text(data.get("plan"), "plan"),
        "name": check_text(data.get("name"), "name", optional=True),
        "features": check_names(data.get("features"), "features"),
        "models": check_names(data.get("models"), "models"),
        "limits": limits,
        "expires_at": check_expires_at(data.get("expires_at")),
    }
    if names is not None:  # the same check as `tallygate keys create` (config/names.py)
        names.check_key(plan=fields["plan"], features=fields["features"],
                        models=fields["models"])
    return fields


def check_update(data: Mapping[str, Any], names: PolicyNames | None,
                 validate_limits: LimitsValidator | None = None) -> dict[str, Any]:
    """The fields of a key update, checked like a creation's (only those given)."""
    unknown = sorted(set(data) - UPDATE_FIELDS)
    if unknown:
        name = unknown[0][:64]
        raise InvalidRequest(f"Unknown field {name!r}{did_you_mean(name, UPDATE_FIELDS)}.",
                             param=name)
    if not data:
        raise InvalidRequest("Nothing to change: give plan, name, features, models, limits "
                             "or expires_at.")
    out: dict[str, Any] = {}
    if "plan" in data:
        out["plan"] = check_text(data["plan"], "plan")
    if "name" in data:
        out["name"] = check_text(data["name"], "name", optional=True)
    for field in ("features", "models"):
        if field in data:
            out[field] = list(check_names(data[field] or [], field))
    if "expires_at" in data:
        out["expires_at"] = check_expires_at(data["expires_at"])
    if "limits" in data:
        out["limits"] = check_limits(data["limits"] or {})
        if validate_limits is not None and out["limits"]:
            validate_limits(out["limits"])
    if names is not None:  # the names a creation is checked against (config/names.py)
        _known(out, names)
    return out


def _known(out: Mapping[str, Any], names: PolicyNames) -> None:
    problems = [("plan", out["plan"], names.plan_problem)] if "plan" in out else []
    problems += [("features", f, names.feature_pattern_problem)
                 for f in out.get("features", [])]
    problems += [("models", m, names.model_pattern_problem) for m in out.get("models", [])]
    for param, value, check in problems:
        problem = check(value)
        if problem is not None:
            raise InvalidRequest(problem[0].upper() + problem[1:] + ".", param=param)
