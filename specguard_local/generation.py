"""The generation primitive every decoder shares: k candidate steps drafted in one batched decode per token.

A `Session` is one model's context plus what its KV cache holds: `tokens` in sequence `seq`, and the logits that
follow them. Candidates live in sequences 0..k-1, each a copy of the session's sequence (`fork`), so the prefix is
never re-prefilled. Every sampled token, the step's last one included, is decoded right away: its attention rows
are captured with it, and the logits after an accepted step are exactly what the next step starts from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from .capture import HIDDEN, Capture
from .engine import Context, Model, Sampling, logprob_and_entropy, sample

STEP_BOUNDARY = b"\n\n"


@runtime_checkable
class PairRuntime(Protocol):
    """What a decoder asks of a loaded draft/target pair. `runtime.Runtime` (one process) and `runtime.SlotRuntime`
    (one request of the server, its decodes merged with the others') both provide it."""

    ids: dict[str, str]             # role -> model id (what profiles and probes are keyed by)
    memory: dict[tuple, object]     # what decoders learn across answers on this pair (the controller)
    clock: Callable[[], float]      # seconds on this request's own clock (less waits for other requests' decodes)

    def model(self, role: str) -> Model: ...

    def session(self, role: str, n_seq: int = 1, layers: int = 0, hidden: bool = False) -> "Session": ...

    def prompt_tokens(self, question: str) -> list[int]: ...

    def chat_tokens(self, messages: list[tuple[str, str]]) -> list[int]: ...


@dataclass
class Session:
    ctx: Context
    tokens: list[int] = field(default_factory=list)
    seq: int = 0
    logits: np.ndarray | None = None

    def sync(self, tokens: list[int]) -> int:
        """Make the KV cache hold exactly `tokens`: drop what differs, prefill the rest in one batch.
        Returns the number of tokens prefilled."""
        keep = 0
        for have, want in zip(self.tokens, tokens):
            if have != want:
                break
            keep += 1
        if keep == len(tokens) and self.logits is not None and len(self.tokens) == keep:
            return 0
        keep = min(keep, len(tokens) - 1)  # re-decode at least the last token to get its logits
        self.ctx.truncate(self.seq, keep)
        self.logits = self.ctx.prefill(tokens[keep:], keep, self.seq)
        self.tokens = list(tokens)
        return len(tokens) - keep

    def extend(self, tokens: list[int], quiet: int = 0) -> np.ndarray:
        """Decode `tokens` after the session's tokens in one batch, with the logits after every one of them but the
        first `quiet` (how a verifier reads a whole step, catching up on `quiet` unread tokens in the same batch);
        the session then holds them."""
        start = len(self.tokens)
        self.ctx.check_room(start + len(tokens))
        self.ctx.truncate(self.seq, start)
        rows = self.ctx.decode(tokens, list(range(start, start + len(tokens))), [self.seq] * len(tokens),
                               [i >= quiet for i in range(len(tokens))])
        self.tokens, self.logits = self.tokens + tokens, rows[-1]
        return rows

    def rewind(self, n_keep: int, logits: np.ndarray) -> None:
        """Forget everything after the first `n_keep` tokens, given the logits that followed them (saved before
        extending). Cheaper than `sync`, and exact: re-decoding the last kept token in a batch of another shape
        would give slightly different logits."""
        self.ctx.truncate(self.seq, n_keep)
        self.tokens, self.logits = self.tokens[:n_keep], logits

    def adopt(self, cand: "Candidate") -> None:
        """Continue from a finished candidate: its sequence now holds tokens + its step."""
        self.seq, self.logits = cand.seq, cand.next_logits
        self.tokens = self.tokens + cand.tokens


@dataclass
class Candidate:
    seq: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)   # raw (temperature 1) log-prob of each sampled token
    entropies: list[float] = field(default_factory=list)  # entropy of the raw distribution each token came from
    data: bytes = b""
    stop: str = ""
    next_logits: np.ndarray | None = None
    rows: dict[int, list[np.ndarray]] = field(default_factory=dict)  # layer -> attention row of each token
    hidden_sum: np.ndarray | None = None
    levels: list[list[float]] = field(default_factory=list)  # early rejection's running grounding (extend_step)
    hopeless: bool = False
    dists: list[np.ndarray] = field(default_factory=list)  # the logits each token was sampled from (keep_logits)

    @property
    def embedding(self) -> np.ndarray:
        """Mean final hidden state over the step's tokens (the selector's model-internal embedding)."""
        return self.hidden_sum / max(len(self.tokens), 1)

    def attention(self, layer: int) -> np.ndarray:
        """The step's rows of `layer` as one zero-padded matrix (called after every token by early rejection)."""
        rows = self.rows[layer]
        matrix = np.zeros((len(rows), max(len(r) for r in rows)), np.float32)
        for i, row in enumerate(rows):
            matrix[i, :len(row)] = row
        return matrix


def _stop_reason(cand: Candidate, token: int, is_eog: bool, max_tokens: int) -> str:
    if is_eog:
        return "eos"
    if STEP_BOUNDARY in cand.data.lstrip():
        return "step"
    return "cap" if len(cand.tokens) >= max_tokens else ""


def sample_steps(session: Session, k: int, sampling: Sampling, rng: np.random.Generator, max_tokens: int,
                 capture: Capture | None = None,
                 hopeless: Callable[[Candidate], bool] | None = None, keep_logits: bool = False) -> list[Candidate]:
    """Sample k candidate steps after `session.tokens`, one batched llama_decode per token for all live candidates.

    Candidates live in k sequences, the session's own among them (the others are forked from it). A candidate stops
    at "\\n\\n", an end-of-generation token, or after `max_tokens` tokens. With `capture`, each
    candidate also collects its tokens' attention rows and final hidden states. `hopeless(cand)` says a candidate
    (even unfinished) can no longer be accepted; once every candidate is hopeless, drafting stops early and the
    live ones end with stop = "early". `keep_logits` keeps the logits each token was sampled from (`dists`: what
    token-level salvage's rejection rule needs when sampling).
    """
    ctx, model, n_past = session.ctx, session.ctx.model, len(session.tokens)
    ctx.check_room(n_past + 1)
    max_tokens = min(max_tokens, ctx.n_ctx_seq - n_past)
    ctx.truncate(session.seq, n_past)
    seqs = sorted([session.seq] + [s for s in range(ctx.n_seq) if s != session.seq][:k - 1])
    ctx.fork(session.seq, seqs)
    cands = [Candidate(seq=s, next_logits=session.logits) for s in seqs]
    live = list(cands)
    while live:
        step_tokens = []
        for cand in live:
            token = sample(cand.next_logits, sampling, rng)
            if keep_logits:
                cand.dists.append(cand.next_logits)
            logprob, entropy = logprob_and_entropy(cand.next_logits, token)
            cand.logprobs.append(logprob)
            cand.entropies.append(entropy)
            cand.tokens.append(token)
            cand.data += model.piece(token)
            step_tokens.append(token)
        pos = n_past + len(live[0].tokens) - 1
        logits = ctx.decode(step_tokens, [pos] * len(live), [c.seq for c in live], [True] * len(live))
        if capture is not None:
            _collect(capture, live)
        for cand, cand_logits, token in zip(live, logits, step_tokens):
            cand.next_logits = cand_logits
            cand.stop = _stop_reason(cand, token, model.is_eog(token), max_tokens)
            # hopeless = can no longer be accepted, whatever follows: once true, no need to ask again
            cand.hopeless = cand.hopeless or (hopeless is not None and hopeless(cand))
        live = [c for c in live if not c.stop]
        if live and all(c.hopeless for c in cands):
            for cand in live:
                cand.stop = "early"
            break
    return cands


def _collect(capture: Capture, live: list[Candidate]) -> None:
    """Hand each live candidate its row of every captured tensor (rows come in sequence order, as batched)."""
    for layer in capture.layers:
        for cand, row in zip(live, capture.rows(layer)):
            cand.rows.setdefault(layer, []).append(row)
    if HIDDEN in capture.parts:
        for cand, row in zip(live, capture.rows(HIDDEN)):
            cand.hidden_sum = row.astype(np.float64) if cand.hidden_sum is None else cand.hidden_sum + row
