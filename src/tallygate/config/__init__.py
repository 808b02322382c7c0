"""The policy: one YAML file (`policy.py` loads it) validated into frozen models
(`models.py`). Everything else reads the policy through `Policy`."""

from tallygate.config.models import (
    Alert,
    Attribution,
    Cache,
    Dashboard,
    Feature,
    LimitFields,
    Limits,
    LimitSet,
    Metrics,
    Provider,
    Refusals,
    Routing,
    Server,
    Storage,
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
    "Attribution",
    "Cache",
    "Dashboard",
    "Feature",
    "LimitFields",
    "LimitSet",
    "Limits",
    "Metrics",
    "Policy",
    "Provider",
    "Refusals",
    "Routing",
    "Server",
    "Storage",
    "default_policy",
    "load_policy",
    "usd_to_nano",
]
