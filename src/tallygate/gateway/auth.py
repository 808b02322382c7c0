"""Who is calling: the virtual key from the request headers, and what it may use.

Every route accepts `Authorization: Bearer <key>`. Anthropic routes also accept
`x-api-key` (anthropic SDK 0.x sends it, 2.x sends Bearer) whatever the
`anthropic-version`; when both are present there, `x-api-key` wins. Error messages never
echo the presented secret.
"""

from __future__ import annotations

from collections.abc import Mapping

from tallygate.errors import InvalidApiKey, PermissionDenied
from tallygate.keys.base import KeyStore
from tallygate.keys.model import VirtualKey


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


def extract_secret(headers: Mapping[str, str], *, anthropic: bool) -> str | None:
    """The presented secret, or None when the request carries none."""
    if anthropic:
        api_key = (_header(headers, "x-api-key") or "").strip()
        if api_key:
            return api_key
    return bearer_token(_header(headers, "authorization"))


def _missing_message(anthropic: bool) -> str:
    where = "'x-api-key' or 'Authorization: Bearer'" if anthropic else "'Authorization: Bearer'"
    return f"Missing API key: pass your tallygate virtual key in {where}."


async def authenticate(
    store: KeyStore, headers: Mapping[str, str], *, anthropic: bool
) -> VirtualKey:
    """The caller's active key, or InvalidApiKey (missing, unknown or revoked)."""
    secret = extract_secret(headers, anthropic=anthropic)
    if secret is None:
        raise InvalidApiKey(_missing_message(anthropic))
    key = await store.verify(secret)
    if key is None:
        raise InvalidApiKey("Invalid API key: unknown or revoked tallygate virtual key.")
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
