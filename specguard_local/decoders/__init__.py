"""Decoders: each a generator of `events.Step` for one question. Registered by name in `METHODS`."""

from .rsd import rsd
from .sd import sd
from .single import draft, target
from .specguard import specguard
from .trispec import trispec

METHODS = {"specguard": specguard, "target": target, "draft": draft, "sd": sd, "trispec": trispec, "rsd": rsd}
