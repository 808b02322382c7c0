"""Who is calling: the virtual key from the request headers, and what it may use.

Every route accepts `Authorization: Bearer <key>`; a protocol may name other headers a
client carries its key in (`WireAdapter.key_headers`: Anthropic's `x-api-key`, which the
anthropic SDK 0.x sends and 2.x replaces with Bearer), and when both are present those
win. Error messages never echo the presented secret.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from tallygate.errors import InvalidApiKey, KeyExpired, PermissionDenied
from tallygate.keys.base import KeyStore
from tallygate.keys.model import VirtualKey
from tallygate.units import iso


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup that is O(1) for the usual lower-cased mappings."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, found in headers.items():
        if key.lower() == name:
            return found
    return None


def bearer_token(value: str | None) -> str | None:
    """The credential of an `Authorization: Bearer …` header, else None."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def extract_secret(headers: Mapping[str, str], key_headers: tuple[str, ...] = ()
                   ) -> str | None:
    """The presented secret, or None when the request carries none."""
    for name in key_headers:
        api_key = (_header(headers, name) or "").strip()
        if api_key:
            return api_key
    return bearer_token(_header(headers, "authorization"))


def _missing_message(key_headers: tuple[str, ...]) -> str:
    where = " or ".join([*(f"'{name}'" for name in key_headers), "'Authorization: Bearer'"])
    return f"Missing API key: pass your tallygate virtual key in {where}."


async def authenticate(
    store: KeyStore, headers: Mapping[str, str], key_headers: tuple[str, ...] = ()
) -> VirtualKey:
    """The caller's active key, or InvalidApiKey (missing, unknown or revoked; KeyExpired
    past its expiry).
    `key_headers`: the protocol's own key headers, besides Bearer (WireAdapter)."""
    secret = extract_secret(headers, key_headers)
    if secret is None:
        raise InvalidApiKey(_missing_message(key_headers))
    key = await store.verify(secret)
    if key is None:
        raise InvalidApiKey("Invalid API key: unknown or revoked tallygate virtual key.")
    if key.expired(time.time()):
        raise KeyExpired(f"This tallygate virtual key ({key.id}) expired at "
                         f"{iso(key.expires_at)}: ask for a new one.")
    return key


def resolve_feature(key: VirtualKey, requested: str | None) -> str | None:
    """The request's feature: the header's, else the key's only allowed feature."""
    if requested:
        return requested
    if len(key.features) == 1 and "*" not in key.features[0]:
        return key.features[0]
    return None


def check_permission(key: VirtualKey, feature: str | None, model: str | None) -> None:
    """PermissionDenied unless the key may use this feature and model.

    A key limited to features must name one (header or its single default): a request
    with no feature would otherwise escape the allow-list."""
    if feature is None:
        if key.features:
            allowed = ", ".join(key.features)
            raise PermissionDenied(
                f"This key is limited to features [{allowed}]: set X-Tallygate-Feature.",
                param="feature",
            )
    elif not key.allows_feature(feature):
        raise PermissionDenied(
            f"This key may not use feature {feature[:128]!r}.", param="feature"
        )
    if model is not None and not key.allows_model(model):
        raise PermissionDenied(f"This key may not use model {model[:128]!r}.", param="model")
