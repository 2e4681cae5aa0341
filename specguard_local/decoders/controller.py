"""Cost-aware control of step-level speculation: keep drafting only while it pays on this device, for this pair.

Measured per answer, online:
    S = seconds per emitted token over the speculative steps (drafting, verifying, the target's rewrites of
        rejected steps, the draft's re-prefills), plus the catch-up the target still owes for accepted steps
        (pending tokens × its measured prefill seconds per token);
    T = seconds per token of the target writing a step itself (measured on every step the target writes).
Speculation is predicted to lose when S > (1 + `MARGIN`)·T, once at least `MIN_STEPS` speculative steps and one
target-written step are measured (the margin: T is often measured on one early step, cheaper than the target's
later ones in a longer context, and S over a few steps is noisy); when every drafted step so far was kept, the
target writes the next step alone to measure T (what the baseline would have done anyway). Once speculation loses,
the answer continues with target-only steps.
After at least `PROBE_EVERY` target-only steps one speculative step is tried again (a probe: the draft first
prefills what the target wrote meanwhile). Probes are paid for from a budget, not a fixed schedule: a probe starts an
episode that lasts until drafting loses again, and the episode is charged what it cost beyond the target writing the
same tokens (its wall time, the probe's catch-up included, less T × its tokens; negative where it saved time). The
next probe is due only while the charges so far, plus the last episode's cost, stay within `EXPLORE_SHARE` of the
time the target spent writing alone. So where drafting never pays, probing costs at most that share of the
target's time, however long the answers run (a fixed back-off schedule lost several times that on the default
pair: docs/measurements.md); where a probe's episode saves time, the savings pay for the next probes at once.

Times come from the request's own clock (`PairRuntime.clock`): in one process the wall clock; inside the server,
wall time less the waits for other requests' decodes (`batching.RequestClock`), so a request compares its own costs,
not the rounds it shared. What is measured carries over to the next answer on the same loaded pair (`next_answer`,
kept in the runtime's memory by verifier settings; each rate weighs at most `CARRY_TOKENS` tokens there, so
fresh measurements soon outweigh an old one): once drafting is known not to pay, a new answer starts with the
target alone and the draft does not even prefill its prompt until a probe is due.

What it chose on the default pair and on the heavier F16 target, and what that cost: docs/measurements.md.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

MIN_STEPS = 2
MARGIN = 0.1
CARRY_TOKENS = 128  # what one answer hands the next weighs at most this many tokens per rate
PROBE_EVERY = 8
EXPLORE_SHARE = 0.01  # probes may cost at most this share of the target's own writing time
# answers running at once in the server share what they learn (`next_answer` reads another answer's controller
# while that one may still be recording): one lock for every controller's totals
_TOTALS = threading.RLock()


def _locked(method):
    @functools.wraps(method)
    def under_lock(self, *args, **kwargs):
        with _TOTALS:
            return method(self, *args, **kwargs)
    return under_lock


@dataclass
class Controller:
    enabled: bool = True
    spec_s: float = 0.0          # wall seconds of speculative steps (probe catch-ups excluded)
    spec_tokens: int = 0
    spec_steps: int = 0
    target_s: float = 0.0        # seconds the target spent writing steps itself
    target_tokens: int = 0
    prefill_s: float = 0.0       # seconds the target spent catching up on accepted draft steps
    prefill_tokens: int = 0
    pending: int = 0             # accepted draft tokens the target has not read yet
    speculating: bool = True
    referenced: bool = False     # the target wrote one step to measure T (every drafted step had been kept)
    since_probe: int = 0
    alone_s: float = 0.0         # seconds the target spent writing steps alone (the probe budget's base)
    explored_s: float = 0.0      # what probe episodes cost beyond the target alone (negative where they saved)
    exploring: bool = False      # a probe's episode is running (drafting has not lost since the probe)
    episode_s: float = 0.0       # the running episode's cost so far
    probe_cost: float = 0.0      # the last finished episode's cost: what the next probe is expected to spend
    reason: str = ""

    @property
    def per_token(self) -> tuple[float | None, float | None]:
        """(S, T) in seconds per emitted token; None where not measured yet."""
        prefill = self.prefill_s / self.prefill_tokens if self.prefill_tokens else 0.0
        s = (self.spec_s + self.pending * prefill) / self.spec_tokens if self.spec_tokens else None
        t = self.target_s / self.target_tokens if self.target_tokens else None
        return s, t

    def speculate(self) -> bool:
        """Whether the next step is drafted (speculative or a probe) rather than written by the target alone."""
        if not self.enabled:
            return True
        if self.speculating:
            if self.target_tokens == 0 and self.spec_steps >= MIN_STEPS and not self.referenced:
                self.referenced = True  # every step so far was kept: one step by the target alone measures T
                return False
            return True
        self.since_probe += 1
        if self.since_probe <= PROBE_EVERY or self.explored_s + self.probe_cost > EXPLORE_SHARE * self.alone_s:
            return False
        self.since_probe, self.speculating = 0, True  # decided again right after the probe
        self.exploring, self.episode_s = True, 0.0
        return True

    @_locked
    def record_speculative(self, seconds: float, tokens: int, target_s: float, target_tokens: int,
                           catch_up_s: float, caught_up: int, one_off_s: float, unread: int) -> None:
        """Fold in one drafted step: its wall time, tokens emitted, the target's rewrite (if the paper's loop rejected
        it), the target's catch-up prefill, the one-off reads not counted in S (the draft catching up on steps the
        target wrote alone, the target reading the prompt) and how many tokens of the answer the target has not read
        yet (`unread`)."""
        self.spec_s += seconds - one_off_s
        self.spec_tokens += tokens
        self.spec_steps += 1
        self.target_s, self.target_tokens = self.target_s + target_s, self.target_tokens + target_tokens
        if caught_up:
            self.prefill_s, self.prefill_tokens = self.prefill_s + catch_up_s, self.prefill_tokens + caught_up
        self.pending = unread
        if self.exploring:  # charged in full, catch-up included, against the target writing the same tokens
            charge = seconds - (self.per_token[1] or 0.0) * tokens
            self.explored_s += charge
            self.episode_s += charge
        self._decide()

    @_locked
    def record_target(self, target_s: float, tokens: int, catch_up_s: float, caught_up: int) -> None:
        """Fold in one step the target wrote alone (after catching up on `caught_up` pending tokens)."""
        self.target_s, self.target_tokens = self.target_s + target_s, self.target_tokens + tokens
        if caught_up:
            self.prefill_s, self.prefill_tokens = self.prefill_s + catch_up_s, self.prefill_tokens + caught_up
            self.pending = 0
        self.alone_s += target_s
        if self.speculating:  # the measuring step: now S and T can be compared
            self._decide()

    def _decide(self) -> None:
        s, t = self.per_token
        if not self.enabled or t is None or self.spec_steps < MIN_STEPS:
            return
        if s > (1 + MARGIN) * t:
            self.speculating = False
            if self.exploring:  # the probe's episode ends: its cost is what the next probe is expected to spend
                self.exploring, self.probe_cost = False, max(self.episode_s, 0.0)
            self.reason = (f"speculation {s * 1000:.1f} ms/token > {1 + MARGIN:g} × target alone {t * 1000:.1f} "
                           f"ms/token")
        else:
            self.reason = (f"speculation {s * 1000:.1f} ms/token <= {1 + MARGIN:g} × target alone {t * 1000:.1f} "
                           f"ms/token")

    @_locked
    def next_answer(self) -> "Controller":
        """A controller for the next answer on the same pair and settings: the measured rates and the probe
        budget carry over, each rate weighing at most `CARRY_TOKENS` tokens (so one slow answer, say beside
        another process, cannot outweigh what the next ones measure); it starts target-only when they already say
        that drafting loses."""
        carried = Controller(self.enabled, *_carried(self.spec_s, self.spec_tokens), self.spec_steps,
                             *_carried(self.target_s, self.target_tokens),
                             *_carried(self.prefill_s, self.prefill_tokens), referenced=self.referenced,
                             since_probe=self.since_probe, alone_s=self.alone_s, explored_s=self.explored_s,
                             exploring=self.exploring, episode_s=self.episode_s, probe_cost=self.probe_cost)
        s, t = carried.per_token
        carried.speculating = not (self.enabled and s is not None and t is not None and s > (1 + MARGIN) * t)
        carried.reason = self.reason if not carried.speculating else ""
        return carried

    def report(self) -> dict:
        """What the controller measured and chose, for the step event and the run's statistics."""
        s, t = self.per_token
        return {"adapt": self.enabled, "speculating": self.speculating, "mode": "speculate" if self.speculating
                else "target", "spec_ms_per_token": None if s is None else
                s * 1000, "target_ms_per_token": None if t is None else t * 1000, "reason": self.reason,
                "probes_cost_s": self.explored_s, "target_alone_s": self.alone_s}


def _carried(seconds: float, tokens: int) -> tuple[float, int]:
    """(seconds, tokens) at the same rate, weighing at most `CARRY_TOKENS` tokens."""
    if tokens <= CARRY_TOKENS:
        return seconds, tokens
    return seconds * CARRY_TOKENS / tokens, CARRY_TOKENS
