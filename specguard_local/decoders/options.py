"""The knobs every decoder reads. One frozen dataclass, so a run is described by a value."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine import Sampling


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
    verifier: str | None = None     # signals, target-judge, probe or a '+' combination; None: the profile's choice
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
