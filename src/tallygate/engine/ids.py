"""Call ids: minted by the server, `tg-` + 32 hex digits of randomness.

Every reservation and every ledger row is keyed on one of these, never on anything a
caller sent: a caller who sees one id learns nothing about the next (a counter would let
it pre-use or collide with another user's ids). 128 random bits: collisions never."""

from __future__ import annotations

import os


def new_call_id() -> str:
    return "tg-" + os.urandom(16).hex()
