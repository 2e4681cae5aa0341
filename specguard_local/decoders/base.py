"""What every decoder shares: the runtime it asks for models and sessions (`PairRuntime`), and one model writing a
step itself (`write_step`: k samples and the self-consistency selector)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..engine import Model
from ..generation import Candidate, Session, sample_steps
from ..verify.signals import select


@runtime_checkable
class PairRuntime(Protocol):
    """What a decoder asks of a loaded draft/target pair. `runtime.Runtime` (one process) and `runtime.SlotRuntime`
    (one request of the server, its decodes merged with the others') both provide it."""

    ids: dict[str, str]             # role -> model id (what profiles and probes are keyed by)
    memory: dict[tuple, object]     # what decoders learn across answers on this pair (the controller)

    def model(self, role: str) -> Model: ...

    def session(self, role: str, n_seq: int = 1, layers: int = 0, hidden: bool = False) -> "Session": ...


def write_step(session: Session, opts, rng: np.random.Generator, budget: int) -> tuple[Candidate, int]:
    """One model writes the next step itself: k samples and the selector's choice (greedy when k = 1); the session
    continues from it. Returns the step and the chosen candidate's index."""
    cands = sample_steps(session, opts.k, opts.sampling, rng, budget, session.ctx.hook)
    chosen = select(np.stack([c.embedding for c in cands])) if opts.k > 1 else 0
    session.adopt(cands[chosen])
    return cands[chosen], chosen
