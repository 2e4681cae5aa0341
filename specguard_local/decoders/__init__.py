"""Decoders: each a generator of `events.Step` for one question. Registered by name in `METHODS`."""

from .single import draft, target
from .specguard import specguard

METHODS = {"specguard": specguard, "target": target, "draft": draft}
