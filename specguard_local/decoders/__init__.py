"""Decoders: each a generator of `events.Step` for one question. Registered by name in `METHODS`."""

from .sd import sd
from .single import draft, target
from .specguard import rsd, specguard
from .trispec import trispec

METHODS = {"specguard": specguard, "target": target, "draft": draft, "sd": sd, "trispec": trispec, "rsd": rsd}
