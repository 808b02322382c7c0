"""The policy: one YAML file (`policy.py` loads it) validated into frozen models
(`models.py`). Everything else reads the policy through `Policy`."""

from tallygate.config.models import (
    Alert,
    Cache,
    CheckBudget,
    CheckSection,
    Feature,
    LimitFields,
    Limits,
    LimitSet,
    Metrics,
    Provider,
    Routing,
    Server,
    Storage,
    parse_duration,
    usd_to_nano,
)
from tallygate.config.policy import (
    ADMIN_KEY_ENV,
    DEFAULT_FEATURE,
    DEFAULT_PATH,
    Policy,
    default_policy,
    load_policy,
)

__all__ = [
    "ADMIN_KEY_ENV",
    "DEFAULT_FEATURE",
    "DEFAULT_PATH",
    "Alert",
    "Cache",
    "CheckBudget",
    "CheckSection",
    "Feature",
    "LimitFields",
    "LimitSet",
    "Limits",
    "Metrics",
    "Policy",
    "Provider",
    "Routing",
    "Server",
    "Storage",
    "default_policy",
    "load_policy",
    "parse_duration",
    "usd_to_nano",
]
