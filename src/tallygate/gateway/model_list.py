"""`GET /v1/models`: the models a key may call, in the shape of the SDK asking.

A model is listed when a configured provider serves it on that protocol (the OpenAI
shape lists the openai-protocol providers' models; a request carrying
`anthropic-version`, as the anthropic SDK's `models.list()` does, gets the Anthropic
shape and the anthropic-protocol models) and the key's allow-list admits it. Catalog
entries nobody can call through these routes are left out: provider-prefixed
duplicates (`openai/gpt-4o`), variants (`ft:…`, `…:batch`), and models of endpoints
the gateway does not proxy (speech, transcription, images, realtime, moderation, the
legacy completions models)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from tallygate.core.catalog import Catalog
from tallygate.keys.model import VirtualKey

_NOT_PROXIED = re.compile(
    r"^(tts-|whisper-|dall-e|davinci|curie|babbage|ada$|ada-|text-davinci|moderation$"
    r"|text-moderation|omni-moderation|chatgpt-image|codex-mini$|computer-use$)"
    r"|realtime|transcribe|-tts|image|(^|-)live(-|$)|instruct|\.ft-|-$")


def listable(name: str) -> bool:
    """Whether a catalog name is a model one calls by that name on our routes."""
    return "/" not in name and ":" not in name and not _NOT_PROXIED.search(name)


@dataclass(frozen=True, slots=True)
class Listed:
    id: str
    owned_by: str


def callable_models(catalog: Catalog, providers: Mapping[str, str],
                    configured: Mapping[str, object]) -> dict[str, list[Listed]]:
    """Per protocol, the models its configured providers serve (built once).
    `providers`: provider name → protocol; `configured`: the policy's `models:`."""
    out: dict[str, list[Listed]] = {"openai": [], "anthropic": []}
    for name in catalog.names():
        if name not in configured and not listable(name):
            continue
        info = catalog.find(name)
        if info is None:
            continue
        protocol = providers.get(info.provider)
        if protocol in out:
            out[protocol].append(Listed(name, info.provider))
    return out


def openai_list(models: list[Listed], key: VirtualKey) -> dict[str, object]:
    return {"object": "list", "data": [
        {"id": m.id, "object": "model", "created": 0, "owned_by": m.owned_by}
        for m in models if key.allows_model(m.id)]}


def anthropic_list(models: list[Listed], key: VirtualKey) -> dict[str, object]:
    data = [{"type": "model", "id": m.id, "display_name": m.id,
             "created_at": "1970-01-01T00:00:00Z"} for m in models if key.allows_model(m.id)]
    return {"data": data, "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}
