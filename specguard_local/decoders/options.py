"""The knobs every decoder reads: one frozen dataclass, so a run is described by a value, and one schema, so every
way in (the CLI, `bench --methods` overrides, the server's request body, the Python API) accepts and refuses the
same values with the same message.

`SCHEMA` gives each field its type, the rule its values follow (in words, for the message, and as a check) and
whether a server request may set it (file paths stay the server's choice). `validate` checks a whole `Options`
against it; `parse_text` reads one value written as text (`bench --methods specguard:tau=0.5`); `typed` checks one
value as JSON gives it (the server). None always means "the default" (the profile's, or the sampler's).
τ (and rsd's δ, trispec's λ): every score they are compared with lies in [0, 1], so a value above 1 means "never"
(tests use 1.01).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

from ..engine import Sampling
from ..errors import OptionError


@dataclass(frozen=True)
class Options:
    max_tokens: int = 1024          # generated-token budget for the whole answer
    max_step_tokens: int = 256      # per-step cap when no "\n\n" comes
    k: int = 1                      # candidates per step (draft and target fallback)
    temperature: float | None = None  # None: 0 (greedy) when k == 1, else 0.7
    top_p: float = 0.8
    seed: int = 0
    beta: float | None = None       # None: the calibration profile's value
    tau: float | None = None        # None: the profile's τ for the verifier
    verifier: str | None = None     # signals, target-judge, probe, arithmetic or a "+" combination; None: profile
    probe: str | None = None        # probe file for the probe verifier; None: the shipped one for the pair
    adapt: bool = True              # specguard: stop drafting when it is measured not to pay (decoders/controller)
    salvage: bool = True            # specguard: a step the verifier refuses keeps the target-agreed prefix (one
                                    # target pass); False: the paper's loop, the target rewrites it
    draft_p_min: float | None = None  # specguard salvage: stop drafting once the draft's own probability of the
                                      # whole stretch falls below this; None: the profile's value
    use_logprob: bool = True
    use_grounding: bool = True
    layers: int = 3                 # attention rollout depth (last N layers)
    lam: float = 0.5                # trispec: trust the proxy where its top-1 − top-2 probability is >= lam
    delta: float = 0.7              # rsd: keep a draft step whose judge score is >= delta
    draft_max: int = 4              # sd: longest draft per round (the cost model may choose fewer, or none)
    draft_fixed: bool = False       # sd: always draft draft_max tokens, no cost model (classic SD)
    profile: str | None = None      # calibration profile path; None: the shipped default

    @property
    def sampling(self) -> Sampling:
        temperature = self.temperature if self.temperature is not None else (0.0 if self.k == 1 else 0.7)
        return Sampling(temperature=temperature, top_p=self.top_p if temperature > 0 else 1.0)


@dataclass(frozen=True)
class Field:
    kind: type
    rule: str = ""                               # what a value must be, in words ("" for any value of the type)
    ok: Callable[[Any], bool] = lambda value: True
    request: bool = True                         # a server request may set it


def _at_least(low):
    return lambda value: value >= low


def _within(low, high):
    return lambda value: low <= value <= high


SCHEMA: dict[str, Field] = {
    "max_tokens": Field(int, "an integer >= 1", _at_least(1)),
    "max_step_tokens": Field(int, "an integer >= 1", _at_least(1)),
    "k": Field(int, "an integer >= 1", _at_least(1)),
    "temperature": Field(float, "a number in [0, 2]", _within(0, 2)),
    "top_p": Field(float, "a number in (0, 1]", lambda value: 0 < value <= 1),
    "seed": Field(int, "an integer in [0, 2**63)", lambda value: 0 <= value < 2 ** 63),
    "beta": Field(float, "a number in [0, 1]", _within(0, 1)),
    "tau": Field(float, "a number >= 0 (above 1: never keep a drafted step)", _at_least(0)),
    "verifier": Field(str, "signals, target-judge, probe, arithmetic or a '+' combination",
                      lambda value: bool(value.strip())),
    "probe": Field(str, request=False),
    "adapt": Field(bool),
    "salvage": Field(bool),
    "draft_p_min": Field(float, "a number in [0, 1]", _within(0, 1)),
    "use_logprob": Field(bool),
    "use_grounding": Field(bool),
    "layers": Field(int, "an integer >= 3", _at_least(3)),
    "lam": Field(float, "a number >= 0 (above 1: never trust the proxy)", _at_least(0)),
    "delta": Field(float, "a number >= 0 (above 1: never keep a drafted step)", _at_least(0)),
    "draft_max": Field(int, "an integer >= 1", _at_least(1)),
    "draft_fixed": Field(bool),
    "profile": Field(str, request=False),
}
assert set(SCHEMA) == {f.name for f in fields(Options)}, "every option is declared once in SCHEMA"

KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def typed(name: str, value: Any) -> Any:
    """`value` (as JSON or Python gives it) checked against the option's type and rule: an int where a number is
    expected becomes a float; a bool is never taken for a number. Raises `OptionError`."""
    field = SCHEMA[name]
    is_bool = isinstance(value, bool)
    if field.kind is float and isinstance(value, int) and not is_bool:
        value = float(value)
    if not isinstance(value, field.kind) or (field.kind is not bool and is_bool):
        raise OptionError(name, f"{name} must be {field.rule or KIND_NAMES[field.kind]}, not {value!r}")
    if not field.ok(value):
        raise OptionError(name, f"{name} must be {field.rule}, not {value!r}")
    return value


def parse_text(name: str, text: str) -> Any:
    """One option written as text (`bench --methods specguard:tau=0.5:adapt=false`), typed and checked."""
    if name not in SCHEMA:
        raise OptionError(name, f"unknown option {name!r}; options are {', '.join(SCHEMA)}")
    kind = SCHEMA[name].kind
    try:
        if kind is bool:
            if text.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError(text)
            value: Any = text.lower() in ("1", "true", "yes")
        else:
            value = kind(text)
    except ValueError:
        raise OptionError(name, f"{name} must be {SCHEMA[name].rule or KIND_NAMES[kind]}, not {text!r}") from None
    return typed(name, value)


def validate(opts: Options) -> None:
    """Check every option of `opts` against `SCHEMA` (None: the default). Raises `OptionError`."""
    for name in SCHEMA:
        value = getattr(opts, name)
        if value is not None:
            typed(name, value)
