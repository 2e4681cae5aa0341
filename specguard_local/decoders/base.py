"""One model writing a step itself (`write_step`: k samples and the self-consistency selector), shared by the
decoders that let the target (or the draft) write alone."""

from __future__ import annotations

import numpy as np

from ..generation import Candidate, Session, sample_steps
from ..verify.signals import select


def write_step(session: Session, opts, rng: np.random.Generator, budget: int) -> tuple[Candidate, int]:
    """One model writes the next step itself: k samples and the selector's choice (greedy when k = 1); the session
    continues from it. Returns the step and the chosen candidate's index."""
    cands = sample_steps(session, opts.k, opts.sampling, rng, budget, session.ctx.hook)
    chosen = select(np.stack([c.embedding for c in cands])) if opts.k > 1 else 0
    session.adopt(cands[chosen])
    return cands[chosen], chosen
