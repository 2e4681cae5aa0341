"""What every decoder yields and what `solve` returns. The CLI, the benchmark and any server only consume these."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Step:
    """One reasoning step (text up to and including "\\n\\n", or the final stretch)."""

    index: int
    text: str
    tokens: list[int]
    source: str                 # "draft" or "target": the model whose tokens were kept
    verdict: str                # "accepted" (draft kept), "rejected" (target rewrote it) or "generated" (baselines)
    stop: str                   # "step" ("\\n\\n") or "cap" (--max-step-tokens); the last step: why the answer
                                # ended, "eos", "budget" (--max-tokens) or "context" (the context is full)
    drafted: int = 0            # draft tokens proposed and judged while producing this step
    accepted: int = 0           # of them, the ones kept
    target_tokens: int = 0      # tokens of this step the target wrote or had to check
    scores: dict[str, float] = field(default_factory=dict)
    candidates: list[dict] = field(default_factory=list)
    chosen: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    control: dict = field(default_factory=dict)  # cost-aware speculation: what it measured and chose so far

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Result:
    question: str
    method: str
    text: str
    answer: str | None
    steps: list[Step]
    stats: dict

    def to_dict(self) -> dict:
        return {"question": self.question, "method": self.method, "answer": self.answer, "text": self.text,
                "stats": self.stats, "steps": [s.to_dict() for s in self.steps]}
