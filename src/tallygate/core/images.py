"""Image token costs by the providers' documented formulas, and image sizes from data URLs.

OpenAI (vision guide, gpt-4o / gpt-4.1 / gpt-5 / o-series): detail "low" costs a fixed `base`;
"high" scales the image to fit 2048×2048, then its shortest side to 768 px, and costs
`base + tile × ceil(w/512) × ceil(h/512)`. base/tile are 85/170, except gpt-4o-mini 2833/5667
(its image tokens are priced ×33). "auto" is counted as "high" (the larger). When the size is
unknown (a remote URL we never fetch) we use the largest possible high-detail cost, 8 tiles
(768×2048): `base + 8 × tile`, an upper bound.

Anthropic (vision docs): tokens ≈ width × height / 750 after resizing to fit 1568 px on the long
edge (~1.15 megapixels), at most ~1,600; unknown size → 1,600, the documented maximum.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct

OPENAI_MAX_TILES = 8
ANTHROPIC_IMAGE_MAX = 1_600
_HEAD_CHARS = 88_000  # base64 chars decoded to find the size: ~64 KB of header


def openai_profile(model_name: str) -> tuple[int, int]:
    """(base, per-tile) tokens for the model's image pricing."""
    return (2_833, 5_667) if "4o-mini" in model_name.lower() else (85, 170)


def openai_image_tokens(
    size: tuple[int, int] | None, detail: str, profile: tuple[int, int]
) -> tuple[int, bool]:
    """(tokens, exact): low is a documented constant; the rest follow or bound the formula."""
    base, tile = profile
    if detail == "low":
        return base, True
    if size is None:
        return base + OPENAI_MAX_TILES * tile, False
    w, h = size
    scale = min(1.0, 2048 / max(w, h))
    w, h = w * scale, h * scale
    short = min(w, h)
    if short > 768:
        w, h = w * 768 / short, h * 768 / short
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return base + tile * tiles, False


def anthropic_image_tokens(size: tuple[int, int] | None) -> int:
    if size is None:
        return ANTHROPIC_IMAGE_MAX
    w, h = size
    scale = min(1.0, 1568 / max(w, h), math.sqrt(1_150_000 / (w * h)))
    return min(ANTHROPIC_IMAGE_MAX, math.ceil(w * scale * h * scale / 750))


def data_url_size(url: str) -> tuple[int, int] | None:
    """(width, height) of a base64 data URL image (PNG, GIF, JPEG), else None."""
    if not url.startswith("data:") or ";base64," not in url[:100]:
        return None
    return base64_image_size(url.split(",", 1)[1])


def base64_image_size(data: str) -> tuple[int, int] | None:
    head = data[:_HEAD_CHARS]
    head = head[: len(head) - len(head) % 4]
    try:
        raw = base64.b64decode(head, validate=False)
    except (binascii.Error, ValueError):
        return None
    return image_size(raw)


def image_size(raw: bytes) -> tuple[int, int] | None:
    size: tuple[int, int] | None = None
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) >= 24:
        size = struct.unpack(">II", raw[16:24])
    elif raw[:6] in (b"GIF87a", b"GIF89a") and len(raw) >= 10:
        size = struct.unpack("<HH", raw[6:10])
    elif raw[:2] == b"\xff\xd8":
        size = _jpeg_size(raw)
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


def _jpeg_size(raw: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(raw):
        if raw[i] != 0xFF:
            return None
        marker = raw[i + 1]
        length = struct.unpack(">H", raw[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", raw[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return None
