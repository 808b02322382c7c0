"""Load the policy file: YAML → `${VAR}` expansion → validated, frozen `Policy`.

This is the only module that reads the environment. Every problem becomes one line of a
`ConfigError`: `FILE: path.in.document: what was expected`. Secrets (api keys, hmac keys,
the admin key) are `SecretStr` and input values are never echoed in errors."""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from tallygate.config.models import (
    Feature,
    LimitFields,
    LimitSet,
    PolicyModel,
    UnsetSecret,
)
from tallygate.config.names import policy_problems
from tallygate.errors import ConfigError

DEFAULT_PATH = "tallygate.yaml"
ADMIN_KEY_ENV = "TALLYGATE_ADMIN_KEY"
DEFAULT_FEATURE = "default"
_NO_FEATURE = Feature()


class Policy(PolicyModel):
    """The validated policy. Frozen; build with `load_policy` or `Policy.from_mapping`."""

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        source: str = "<inline>",
        *,
        env: Mapping[str, str] | None = None,
    ) -> Policy:
        """Validate a parsed document. `env` defaults to the process environment."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping of sections at the top level")
        environ = os.environ if env is None else env
        _check_size(data, source)
        expanded = _expand(dict(data), environ, source, ())
        if "admin_key" not in expanded and environ.get(ADMIN_KEY_ENV):
            expanded["admin_key"] = environ[ADMIN_KEY_ENV]
        try:
            policy = cls.model_validate(expanded)
        except ValidationError as exc:
            raise ConfigError(_format_errors(exc, source)) from None
        problems = [f"{source}: {line}" for line in policy_problems(policy)]
        if len(problems) > 1:
            problems.insert(0, f"{source}: {len(problems)} problems in the policy:")
        if problems:
            raise ConfigError("\n".join(problems))
        return policy

    def feature(self, name: str | None) -> Feature:
        """The feature's settings; unknown names get the `default` feature's."""
        if name is not None:
            found = self.features.get(name)
            if found is not None:
                return found
        return self.features.get(DEFAULT_FEATURE, _NO_FEATURE)

    def flag(self, name: str) -> bool:
        """The feature's on/off state from the file (run-time flags override it)."""
        if name in self.flags:
            return self.flags[name]
        return self.feature(name).enabled


def load_policy(path: str | os.PathLike[str] | None = None) -> Policy:
    """Load a policy file; None → ./tallygate.yaml when present, else built-in defaults."""
    if path is None:
        if not Path(DEFAULT_PATH).is_file():
            return default_policy()
        path = DEFAULT_PATH
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: policy file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read the policy file ({type(exc).__name__})") from None
    return parse_policy(text, source)


def parse_policy(text: str, source: str = "<inline>") -> Policy:
    """A policy from YAML text (what load_policy reads from the file)."""
    data = _parse_yaml(text, source)
    return Policy.from_mapping({} if data is None else data, source)


_DEFAULTS: dict[str, Any] = {
    "storage": {"state": "sqlite:///tallygate.db", "ledger": "sqlite:///tallygate.db"},
    "providers": {
        "openai": {
            "protocol": "openai",
            "base_url": "${OPENAI_BASE_URL:-https://api.openai.com/v1}",
            "api_key": "${OPENAI_API_KEY:-}",
        },
        "anthropic": {
            "protocol": "anthropic",
            "base_url": "${ANTHROPIC_BASE_URL:-https://api.anthropic.com}",
            "api_key": "${ANTHROPIC_API_KEY:-}",
        },
    },
    "tiers": {"small": "gpt-4o-mini", "medium": "gpt-4o", "large": "gpt-4.1"},
    "features": {"default": {"max_output": 4096, "on_exceed": "reject"}},
    "plans": {
        "free": {"tokens_per_day": 10_000},
        "pro": {"tokens_per_day": 100_000},
        "enterprise": {"tokens_per_day": 1_000_000},
    },
    "limits": {"global": {"tokens_per_minute": 1_000_000}},
    "routing": {
        "steps": {
            "planning": "large",
            "execution": "medium",
            "review": "medium",
            "verification": "small",
        }
    },
}


def default_policy(*, env: Mapping[str, str] | None = None) -> Policy:
    """Built-in defaults: openai + anthropic providers, a `default` feature, three plans."""
    return Policy.from_mapping(_DEFAULTS, "<built-in defaults>", env=env)


# ---------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """Safe YAML whose floats are exact Decimals (money must never pass through float)."""


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.Node) -> Decimal:
    text = str(loader.construct_scalar(node)).replace("_", "").lower()  # type: ignore[arg-type]
    specials = {".inf": "Infinity", "+.inf": "Infinity", "-.inf": "-Infinity", ".nan": "NaN"}
    return Decimal(specials.get(text, text))


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)


def _parse_yaml(text: str, source: str) -> Any:
    """Parse YAML. `${VAR}` is not valid inside YAML flow mappings (`{api_key: ${K}}`,
    as docs/policy.md writes it), so each one is swapped for a plain word first and put back
    after parsing; expansion happens later, on the parsed strings."""
    marker = "tallygatevar"
    while marker in text:
        marker += "x"
    found: list[str] = []

    def stash(match: re.Match[str]) -> str:
        found.append(match.group(0))
        return f"{marker}{len(found) - 1}z"

    hidden = _VAR_TEXT.sub(stash, text)
    try:
        data = yaml.load(hidden, Loader=_Loader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
        raise ConfigError(f"{source}: invalid YAML at {where}: {exc.problem}") from None
    except (yaml.YAMLError, ArithmeticError) as exc:
        raise ConfigError(f"{source}: invalid YAML ({type(exc).__name__})") from None
    _check_size(data, source)
    if not found:
        return data
    back = re.compile(re.escape(marker) + r"(\d+)z")
    return _map_strings(data, lambda s: back.sub(lambda m: found[int(m.group(1))], s))


def _map_strings(value: Any, fn: Any) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {_map_strings(k, fn): _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value


_MAX_NODES = 200_000
_MAX_DEPTH = 64


def _check_size(data: Any, source: str) -> None:
    """Refuse self-referencing or exploding documents (YAML aliases) before walking them."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > _MAX_NODES or depth > _MAX_DEPTH:
            raise ConfigError(
                f"{source}: the document is too large or too deeply nested "
                f"(more than {_MAX_NODES} values or {_MAX_DEPTH} levels; recursive aliases?)"
            )
        if isinstance(node, Mapping):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list | tuple):
            stack.extend((v, depth + 1) for v in node)


# ---------------------------------------------------------------- ${VAR} expansion

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_VAR_TEXT = re.compile(r"\$\{[^}\n]*\}")


class _MissingVariable(ConfigError):
    def __init__(self, message: str, variable: str) -> None:
        super().__init__(message)
        self.variable = variable


def _expand(value: Any, env: Mapping[str, str], source: str, path: tuple[Any, ...]) -> Any:
    """Expand `${VAR}` / `${VAR:-default}` in every string; `$$` is a literal `$`.
    A missing variable is an error, except in a secret: that one is kept as an
    UnsetSecret, so only what actually uses it fails (and says which variable)."""
    if isinstance(value, str):
        return _expand_text(value, env, source, path) if "$" in value else value
    if isinstance(value, float):
        return Decimal(repr(value))  # as from YAML: the number as written, exactly
    if isinstance(value, Mapping):
        return {_key(k): _expand(v, env, source, (*path, k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_expand(v, env, source, (*path, i)) for i, v in enumerate(value)]
    return value


def _expand_text(text: str, env: Mapping[str, str], source: str,
                 path: tuple[Any, ...]) -> str | UnsetSecret:
    try:
        return _expand_str(text, env, source, path)
    except _MissingVariable as exc:
        if not _is_secret(path):
            raise
        return UnsetSecret(exc.variable, f"{source}: {_dotted(path)}")


def _key(key: Any) -> Any:
    """YAML 1.1 reads a key `on`/`off`/`yes` as a bool; names are strings here."""
    if isinstance(key, bool):
        return "on" if key else "off"
    return key


def _expand_str(text: str, env: Mapping[str, str], source: str, path: tuple[Any, ...]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        found = env.get(name)
        if found is not None and (found != "" or default is None):
            return found
        if default is not None:
            return default
        where = _dotted(path) or "(top level)"
        raise _MissingVariable(
            f"{source}: {where}: environment variable {name} is not set "
            f"(set it, or write ${{{name}:-default}})", name)

    return _VAR.sub(replace, text)


# ---------------------------------------------------------------- error messages


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _format_errors(exc: ValidationError, source: str) -> str:
    lines: list[str] = []
    # The input stays out of every message (it may be a secret); a choice field's input is
    # only matched against its choices, for a suggestion.
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        lines.append(f"{source}: {_dotted(loc) or '(top level)'}: {_expectation(err, loc)}")
    if len(lines) > 1:
        lines.insert(0, f"{source}: {len(lines)} problems in the policy:")
    return "\n".join(lines)


def _expectation(err: Any, loc: tuple[Any, ...]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        candidates = [*allowed, *LimitSet.model_fields] if _LIMIT_PATTERN in allowed else allowed
        hint = difflib.get_close_matches(str(loc[-1]), candidates, n=1)
        guess = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"unknown key{guess}; expected one of: {', '.join(allowed)}"
    if kind == "missing":
        return "required key is missing"
    message = str(err["msg"]).removeprefix("Value error, ")
    if kind == "literal_error" and isinstance(err.get("input"), str):
        choices = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
        hint = difflib.get_close_matches(err["input"], choices, n=1)
        if hint:
            return f"{message} (did you mean {hint[0]!r}?)"
    return message


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the model at `loc` accepts, by walking the model classes."""
    node: Any = Policy
    for part in loc:
        node = _child_type(node, part)
        if node is None:
            return []
    if not (isinstance(node, type) and issubclass(node, BaseModel)):
        return []
    keys = [f.alias or name for name, f in node.model_fields.items()]
    if issubclass(node, LimitFields):  # name the limit pattern once
        limit_keys = set(LimitSet.model_fields) - {"rolling"}
        keys = [_LIMIT_PATTERN] + [k for k in keys if k not in limit_keys]
    return keys


_LIMIT_PATTERN = "<tokens|requests|cost_usd>_per_<minute|hour|day|month>"


def _child_type(node: Any, part: Any) -> Any:
    node = _unwrap_optional(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        for name, field in node.model_fields.items():
            if part in (name, field.alias):
                return field.annotation
        return None
    args = typing.get_args(node)
    origin = typing.get_origin(node)
    if origin is dict and len(args) == 2:
        return args[1]
    if origin in (tuple, list) and args:
        return args[0]
    return None


def _is_secret(path: tuple[Any, ...]) -> bool:
    """Whether the document path leads to a SecretStr field (api_key, hmac_key …)."""
    node: Any = Policy
    for part in path:
        node = _child_type(node, part)
        if node is None:
            return False
    return _unwrap_optional(node) is SecretStr


def _unwrap_optional(node: Any) -> Any:
    if typing.get_origin(node) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(node) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return node
