"""The policy file: SPEC §2 loads; every problem names file, path and expectation;
`${VAR}` expansion; secrets never leak; money is exact nano-USD."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pytest

from tallygate.config import Policy, default_policy, load_policy
from tallygate.config.models import unset_secrets
from tallygate.errors import ConfigError, SecretNotSet
from tallygate.types import Metric, Window

SPEC_EXAMPLE = """\
storage:
  state: sqlite:///tallygate.db     # memory:// | sqlite:///PATH | redis://HOST:PORT/DB
  ledger: sqlite:///tallygate.db    # sqlite:///PATH | postgresql://USER@HOST:PORT/DB
providers:
  openai:    {protocol: openai,    base_url: https://api.openai.com/v1, api_key: ${OPENAI_API_KEY}}
  anthropic: {protocol: anthropic, base_url: https://api.anthropic.com, api_key: ${ANTHROPIC_API_KEY}}
models:                              # optional: extra models or overrides of the catalog
  my-local-llama: {provider: local, context_window: 8192, encoding: cl100k_base, input_per_mtok: 0, output_per_mtok: 0}
tiers:                               # model tiers for routing by step
  small: claude-haiku-4-5
  medium: claude-sonnet-4-5
  large: claude-opus-4-1
features:
  chat:         {max_input: 4000,  max_output: 1000, model: gpt-4o,      on_exceed: trim}
  summarize:    {max_input: 16000, max_output: 500,  model: gpt-4o-mini, on_exceed: reject}
  code_review:  {max_input: 32000, max_output: 2000, model: gpt-4o}
  quick_answer: {max_input: 1000,  max_output: 200,  model: gpt-4o-mini}
plans:                               # per-user budgets
  free:       {tokens_per_day: 10000}
  pro:        {tokens_per_day: 100000}
  enterprise: {tokens_per_day: 1000000}
limits:
  global: {tokens_per_minute: 1000000}
  # any scope may carry tokens_per_minute / _hour / _day / _month, requests_per_minute, cost_per_day_usd …
routing:
  steps: {planning: large, execution: medium, review: medium, verification: small}
alerts:
  - {metric: cost_usd, window: hour, above: 50, notify: "https://hooks.example.com/x"}
  - {metric: context_utilization, above: 0.9, notify: "https://hooks.example.com/x"}
  - {metric: budget_used, scope: user, above: 0.8, notify: "https://hooks.example.com/x"}
flags:
  code_review: on                    # feature flags; switchable at run time (see §5)
"""  # noqa: E501 - SPEC §2 verbatim

OPENAI_SECRET = "sk-test-0123456789abcdef"
ANTHROPIC_SECRET = "sk-ant-zyxwvu987654"


@pytest.fixture
def spec_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_SECRET)
    monkeypatch.delenv("TALLYGATE_ADMIN_KEY", raising=False)


def write(tmp_path: Path, text: str, name: str = "tallygate.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    """The ConfigError's lines for a document (without the count header)."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    lines = str(info.value).splitlines()
    for line in lines:
        assert line.startswith(f"{path}: "), line
    return [
        line.removeprefix(f"{path}: ") for line in lines if "problems in the policy" not in line
    ]


# ---------------------------------------------------------------- the SPEC example


def test_spec_example_loads(tmp_path: Path, spec_env: None) -> None:
    policy = load_policy(write(tmp_path, SPEC_EXAMPLE))
    assert policy.providers["openai"].protocol == "openai"
    assert policy.providers["openai"].api_key is not None
    assert policy.providers["openai"].api_key.get_secret_value() == OPENAI_SECRET
    assert policy.providers["anthropic"].api_key.get_secret_value() == ANTHROPIC_SECRET
    assert policy.features["chat"].max_input == 4000
    assert policy.features["chat"].on_exceed == "trim"
    assert policy.features["code_review"].on_exceed == "reject"  # the default
    assert policy.plans["pro"].tokens_per_day == 100_000
    rules = policy.limits.global_.rules
    assert [(r.metric, r.window, r.amount) for r in rules] == [
        (Metric.TOKENS, Window.MINUTE, 1_000_000)
    ]
    assert policy.routing.steps["planning"] == "large"
    assert policy.tiers["large"] == "claude-opus-4-1"
    assert policy.flags == {"code_review": True}
    assert policy.alerts[0].above_nusd == 50 * 10**9
    assert policy.alerts[1].above == Decimal("0.9")
    assert policy.alerts[2].scope == "user"
    assert policy.models["my-local-llama"]["context_window"] == 8192
    assert policy.storage.fail_mode == "fail_closed"
    assert policy.server.max_body_bytes == 32 * 1024 * 1024


def test_policy_is_frozen(tmp_path: Path, spec_env: None) -> None:
    policy = load_policy(write(tmp_path, SPEC_EXAMPLE))
    with pytest.raises(Exception, match="frozen"):
        policy.log_content = True  # type: ignore[misc]


def test_default_policy_is_usable() -> None:
    policy = default_policy(env={})
    assert set(policy.providers) == {"openai", "anthropic"}
    assert policy.providers["openai"].api_key is None  # ${OPENAI_API_KEY:-} unset
    assert policy.feature("default").max_output == 4096
    assert policy.feature("no-such-feature") is policy.features["default"]
    assert policy.limits.global_.rules


def test_load_none_uses_local_file_then_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert "default" in load_policy(None).features  # no file: built-in defaults
    write(tmp_path, "features: {only: {max_input: 5}}\n")
    assert set(load_policy(None).features) == {"only"}


def test_empty_file_is_an_empty_policy(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "# nothing\n"))
    assert policy.features == {}
    assert policy.storage.state == "sqlite:///tallygate.db"


# ---------------------------------------------------------------- validation messages


def test_each_problem_names_path_and_expectation(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        """\
features:
  chat: {max_input: lots, max_ouput: 3, on_exceed: drop}
limits:
  global: {tokens_per_minit: 5}
storage: {fail_mode: maybe}
""",
    )
    joined = "\n".join(lines)
    assert "features.chat.max_input: Input should be a valid integer" in joined
    assert "features.chat.max_ouput: unknown key (did you mean 'max_output'?)" in joined
    assert "features.chat.on_exceed: Input should be 'reject', 'trim' or 'summarize'" in joined
    assert (
        "limits.global.tokens_per_minit: unknown key (did you mean 'tokens_per_minute'?)" in joined
    )
    assert "storage.fail_mode: Input should be 'fail_closed' or 'fail_open'" in joined
    assert len(lines) == 5


def test_a_near_miss_of_a_choice_gets_did_you_mean(tmp_path: Path) -> None:
    lines = problems(tmp_path, "features:\n  chat: {on_exceed: trimm}\n"
                               "storage: {fail_mode: fail_opne, state_mode: ownr}\n")
    assert sorted(line for line in lines if "problems in" not in line) == sorted([
        "features.chat.on_exceed: Input should be 'reject', 'trim' or 'summarize' "
        "(did you mean 'trim'?)",
        "storage.fail_mode: Input should be 'fail_closed' or 'fail_open' "
        "(did you mean 'fail_open'?)",
        "storage.state_mode: Input should be 'auto', 'owner' or 'shared' "
        "(did you mean 'owner'?)"])


def test_negative_and_boolean_counts_rejected(tmp_path: Path) -> None:
    lines = problems(tmp_path, "features:\n  chat: {max_input: -1, max_output: yes}\n")
    assert any(line.startswith("features.chat.max_input: ") and "0" in line for line in lines)
    assert any(
        line.startswith("features.chat.max_output: ") and "true/false" in line for line in lines
    )


def test_unknown_top_level_section(tmp_path: Path) -> None:
    (line,) = problems(tmp_path, "limtis: {}\n")
    assert line.startswith("limtis: unknown key (did you mean 'limits'?)")


def test_missing_required_key(tmp_path: Path) -> None:
    (line,) = problems(tmp_path, "providers:\n  x: {base_url: 'https://x'}\n")
    assert line == "providers.x.protocol: required key is missing"


def test_alert_list_index_in_path(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        "alerts:\n  - {metric: cost_usd, above: 1, notify: 'https://h'}\n"
        "  - {metric: cost, above: 1, notify: 'https://h'}\n",
    )
    assert lines[0].startswith("alerts[1].metric: Input should be 'cost_usd'")


def test_cross_references(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        "features: {chat: {model: 'tier:huge'}}\n"
        "plans: {free: {tokens_per_day: 1}}\n"
        "limits: {plan: {gold: {tokens_per_day: 5}, free: {tokens_per_day: 9}}}\n",
    )
    assert "features.chat.model: unknown tier 'huge'; known tiers: none" in lines
    assert "limits.plan.gold: unknown plan 'gold'; known plans: default, free" in lines


def test_bad_urls(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        "storage: {state: 'mysql://x', ledger: 'redis://x'}\n"
        "providers: {o: {protocol: openai, base_url: 'api.openai.com'}}\n",
    )
    assert any(line.startswith("storage.state: expected a URL starting with") for line in lines)
    assert any(line.startswith("storage.ledger: expected a URL starting with") for line in lines)
    assert "providers.o.base_url: expected an http:// or https:// URL" in lines


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "features:\n  chat: {max_input: 3\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+, column \d+"):
        load_policy(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="policy file not found"):
        load_policy(tmp_path / "nope.yaml")


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_policy(write(tmp_path, "- a\n- b\n"))


# ---------------------------------------------------------------- environment


def test_env_expansion_and_default() -> None:
    policy = Policy.from_mapping(
        {
            "storage": {"state": "${STATE:-memory://}", "ledger": "sqlite:///${DIR}/l.db"},
            "server": {"port": "${PORT}"},
            "features": {"f": {"max_input": "${MAXIN:-77}"}},
        },
        env={"DIR": "/var/tg", "PORT": "9000"},
    )
    assert policy.storage.state == "memory://"
    assert policy.storage.ledger == "sqlite:////var/tg/l.db"
    assert policy.server.port == 9000
    assert policy.features["f"].max_input == 77


def test_env_empty_value_takes_default_and_dollar_escape() -> None:
    policy = Policy.from_mapping(
        {"models": {"m": {"provider": "${A:-fallback}", "note": "cost$$", "other": "${C}"}}},
        env={"A": "", "C": ""},
    )
    assert policy.models["m"] == {"provider": "fallback", "note": "cost$", "other": ""}


def test_missing_env_var_is_named(tmp_path: Path) -> None:
    os.environ.pop("TG_TEST_MISSING_VAR", None)
    with pytest.raises(ConfigError) as info:
        load_policy(write(tmp_path, "server: {host: ${TG_TEST_MISSING_VAR}}\n"))
    msg = str(info.value)
    assert msg.endswith("server.host: environment variable TG_TEST_MISSING_VAR is not set "
                        "(set it, or write ${TG_TEST_MISSING_VAR:-default})")


def test_unset_secret_fails_only_when_read(tmp_path: Path) -> None:
    """A secret's variable is needed where the secret is used, never to load the file."""
    path = write(
        tmp_path,
        "providers:\n  o: {protocol: openai, base_url: 'https://x', "
        "api_key: ${TG_TEST_MISSING_VAR}}\n",
    )
    os.environ.pop("TG_TEST_MISSING_VAR", None)
    policy = load_policy(path)
    secret = policy.providers["o"].api_key
    assert secret and unset_secrets(policy) == [secret]
    with pytest.raises(SecretNotSet) as info:
        secret.get_secret_value()
    assert info.value.message.startswith(
        f"{path}: providers.o.api_key: environment variable TG_TEST_MISSING_VAR is not set")
    assert info.value.status == 500
    assert policy == load_policy(path)  # comparing never reads the value
    os.environ["TG_TEST_MISSING_VAR"] = "sk-set-now"
    try:
        assert load_policy(path).providers["o"].api_key.get_secret_value() == "sk-set-now"
        assert "sk-set-now" not in repr(load_policy(path))
    finally:
        del os.environ["TG_TEST_MISSING_VAR"]


def test_admin_key_from_environment() -> None:
    policy = Policy.from_mapping({}, env={"TALLYGATE_ADMIN_KEY": "adm-secret-1"})
    assert policy.admin_key is not None
    assert policy.admin_key.get_secret_value() == "adm-secret-1"
    assert Policy.from_mapping({}, env={}).admin_key is None


# ---------------------------------------------------------------- secrets


def test_secrets_not_in_str_or_repr(tmp_path: Path, spec_env: None) -> None:
    text = SPEC_EXAMPLE + "cache: {hmac_key: hm-secret-42}\nadmin_key: adm-secret-77\n"
    policy = load_policy(write(tmp_path, text))
    for rendered in (str(policy), repr(policy), repr(policy.providers), str(policy.model_dump())):
        for secret in (OPENAI_SECRET, ANTHROPIC_SECRET, "hm-secret-42", "adm-secret-77"):
            assert secret not in rendered
    assert policy.cache.hmac_key.get_secret_value() == "hm-secret-42"


def test_secrets_not_in_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TG_SECRET", "sk-very-secret-value")
    text = (
        "providers:\n"
        "  o: {protocol: openai, base_url: 'https://x', api_key: [sk-inline-secret], "
        "timeout: ${TG_SECRET}}\n"
        "admin_key: {nested: sk-admin-secret}\n"
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    msg = str(info.value)
    assert "providers.o.api_key" in msg
    assert "providers.o.timeout" in msg
    assert "admin_key" in msg
    for secret in ("sk-inline-secret", "sk-very-secret-value", "sk-admin-secret"):
        assert secret not in msg
        assert secret not in repr(info.value)


# ---------------------------------------------------------------- money


@pytest.mark.parametrize(
    ("text", "nano"),
    [
        ("0.000000001", 1),
        ("12.5", 12_500_000_000),
        ("50", 50_000_000_000),
        ("0.1", 100_000_000),
        ("1e-9", 1),
        ("'3.3'", 3_300_000_000),
        ("0", 0),
    ],
)
def test_money_is_exact(tmp_path: Path, text: str, nano: int) -> None:
    policy = load_policy(write(tmp_path, f"limits: {{user: {{cost_usd_per_day: {text}}}}}\n"))
    (rule,) = policy.limits.user.rules
    assert rule.metric is Metric.COST
    assert rule.amount == nano
    assert type(rule.amount) is int


def test_money_spec_spelling_and_python_floats() -> None:
    policy = Policy.from_mapping({"limits": {"user": {"cost_per_day_usd": 0.1}}}, env={})
    assert policy.limits.user.rules[0].amount == 100_000_000  # 0.1 as written, not 0.1000…0055


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (".nan", "not NaN or infinity"),
        (".inf", "not NaN or infinity"),
        ("-0.5", ">= 0"),
        ("0.0000000001", "at most 9 decimal places"),
        ("lots", "expected a number"),
        ("true", "not true/false"),
    ],
)
def test_bad_money_rejected(tmp_path: Path, text: str, expected: str) -> None:
    (line,) = problems(tmp_path, f"plans: {{free: {{cost_usd_per_month: {text}}}}}\n")
    assert line.startswith("plans.free.cost_usd_per_month: ")
    assert expected in line


def test_both_cost_spellings_rejected(tmp_path: Path) -> None:
    (line,) = problems(tmp_path, "limits: {global: {cost_usd_per_day: 1, cost_per_day_usd: 2}}\n")
    assert line.startswith("limits.global: ")
    assert "not both" in line


# ---------------------------------------------------------------- shapes


def test_limits_shape_and_rolling() -> None:
    policy = Policy.from_mapping(
        {
            "features": {"chat": {"max_input": 10, "tokens_per_day": 500, "rolling": True}},
            "limits": {
                "feature": {"default": {"requests_per_minute": 60}},
                "model": {"gpt-4o": {"cost_usd_per_month": 100}},
                "key": {"tokens_per_hour": 1000},
                "run": {"tokens_per_day": 20000},
            },
        },
        env={},
    )
    (rule,) = policy.features["chat"].rules
    assert (rule.metric, rule.window, rule.amount, rule.rolling) == (
        Metric.TOKENS,
        Window.DAY,
        500,
        True,
    )
    assert policy.limits.model["gpt-4o"].rules[0].amount == 100 * 10**9
    assert policy.limits.feature["default"].rules[0].metric is Metric.REQUESTS


def test_flags_on_off_and_feature_enabled(tmp_path: Path) -> None:
    policy = load_policy(
        write(tmp_path, "flags: {a: on, b: off, c: 'on'}\n"
                        "features: {a: {}, b: {}, c: {}, d: {enabled: false}}\n")
    )
    assert policy.flags == {"a": True, "b": False, "c": True}
    assert policy.flag("a") and not policy.flag("b") and not policy.flag("d")
    assert policy.flag("unknown")  # no default feature: enabled


def test_durations() -> None:
    policy = Policy.from_mapping(
        {
            "storage": {"lease_seconds": "5m"},
            "cache": {"ttl": "1h"},
            "features": {"f": {"cache_ttl": 30}},
        },
        env={},
    )
    assert policy.storage.lease_seconds == 300
    assert policy.cache.ttl == 3600
    assert policy.features["f"].cache_ttl == 30


def test_docs_complete_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    doc = Path(__file__).resolve().parents[2] / "docs" / "policy.md"
    blocks = re.findall(r"```yaml\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "TALLYGATE_CACHE_KEY"):
        monkeypatch.setenv(name, "x")
    policy = load_policy(write(tmp_path, blocks[-1]))
    assert policy.features["summarize"].model == "tier:small"
    assert policy.plans["pro"].cost_usd_per_month == 20 * 10**9


@pytest.mark.parametrize(
    "text",
    [
        "features: &a {x: *a}\n",
        "a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9]\n"
        "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
        "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
        "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
    ],
)
def test_recursive_or_exploding_documents_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="too large or too deeply nested"):
        load_policy(write(tmp_path, text))


def test_every_policy_on_the_agents_page_loads() -> None:
    """docs/agents.md's policies use option names the loader knows (a renamed option
    would make them fail with "did you mean")."""
    import re

    import yaml

    page = (Path(__file__).resolve().parents[2] / "docs" / "agents.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", page, re.S)
    assert len(blocks) >= 2
    for block in blocks:
        Policy.from_mapping(yaml.safe_load(block), env={})
    budgets = page.split("## Budgets that suit agents")[1]
    for name in ("stream_slice", "tokens_per_run", "cost_usd_per_run",
                 "max_attempts_per_step", "on_runaway"):
        assert name in budgets
