"""Where `tallygate check` finds its budgets: the policy's `check:` section
(`--config FILE`, else ./tallygate.yaml), else `[tool.tallygate.check]` in
pyproject.toml (`--config pyproject.toml`, else ./pyproject.toml). Globs are relative to
the directory of the file that declares them."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tallygate.config import DEFAULT_PATH, CheckSection, Policy, load_policy
from tallygate.errors import ConfigError

PYPROJECT = "pyproject.toml"


@dataclass(frozen=True, slots=True)
class CheckSource:
    section: CheckSection
    policy: Policy  # for `feature:` entries and the models' overrides
    base: Path  # globs are relative to this directory
    file: str  # the file that declares the budgets


def _pyproject_section(path: Path) -> CheckSection | None:
    """`[tool.tallygate.check]` of a pyproject.toml, validated like the policy's, or None
    when the file has no such table."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({type(exc).__name__})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    tool: Any = data.get("tool", {})
    table = tool.get("tallygate", {}) if isinstance(tool, dict) else {}
    if not isinstance(table, dict) or "check" not in table:
        return None
    extra = sorted(set(table) - {"check"})
    if extra:
        raise ConfigError(f"{path}: [tool.tallygate] holds only `check` (the rest of the "
                          f"policy lives in {DEFAULT_PATH}); unknown: {', '.join(extra)}")
    return Policy.from_mapping({"check": table["check"]}, f"{path} [tool.tallygate]").check


def find_check_source(config: Path | None) -> CheckSource:
    """The budgets to check; ConfigError when there are none anywhere."""
    if config is not None and config.suffix == ".toml":
        section = _pyproject_section(config)
        if section is None:
            raise ConfigError(f"{config}: no [tool.tallygate.check] table")
        return CheckSource(section, load_policy(None), config.parent, str(config))
    policy = load_policy(config)
    policy_file = config if config is not None else Path(DEFAULT_PATH)
    if policy.check.budgets:
        return CheckSource(policy.check, policy, policy_file.parent, str(policy_file))
    pyproject = Path(PYPROJECT)
    section = _pyproject_section(pyproject) if pyproject.is_file() else None
    if section is not None and section.budgets:
        return CheckSource(section, policy, Path(), PYPROJECT)
    raise ConfigError(
        "no budgets to check: add a `check:` section with `budgets:` to tallygate.yaml "
        "(or [tool.tallygate.check] to pyproject.toml), or give PATHS with --budget N")
