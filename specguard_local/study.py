"""Step-signal study: which draft steps are safe to keep? A corpus of draft steps labelled by outcome.

For each dev problem the target writes its own greedy solution s_1 … s_n (graded against the gold answer). At
every step boundary c_i = prompt + s_1 … s_i the draft writes its next step d (greedy; with k > 1 also k-1 sampled
candidates), and for each d:
  - every signal a verifier could use: the draft's min/mean log-prob and min/mean grounding (SpecGuard's r is
    computed from them in the report, under the pair's profile), its token entropies (max, mean), the target's log-probs of d from one batched prefill (min, mean, geometric-mean
    probability: the target judge), and the mean final hidden state of d under the draft and under the target
    (the probe's features), with what each cost;
  - the outcome label: the target completes the solution greedily from c_i + d and the answer is graded. d is
    **harmful** when the target's own solution from c_i (which, greedy, is its whole solution) is right and the
    one after d is wrong; **rescue** the other way round; else **neutral**;
  - the cheap label `says_same`: d states the same numbers and operators as the target's own step s_{i+1}.

KV reuse: the target's own solution stays in sequence 0; each rollout forks it into sequence 1 and rolls that back
to c_i (`llama_memory_seq_cp` + `seq_rm`), so no prefix is prefilled twice; the draft moves forward through c_i
with one prefill per target step. A d that is token-identical to s_{i+1}, or that ends the answer, needs no
rollout. Rows are one JSON line per finished problem (resumable, like `bench`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .api import stream
from .bench import append_row, open_run, read_rows
from .datasets import Problem, load_problems
from .decoders.options import Options
from .engine import Sampling
from .errors import SpecGuardError
from .generation import Candidate, Session, sample_steps
from .grading import extract_answer, is_correct
from .runtime import Runtime
from .verify.probe import encode_vector
from .verify.signals import Grounding, Profile
from .verify.stage import read_step

ROWS_FILE = "steps.jsonl"
GREEDY = Sampling()
SAMPLED = Sampling(temperature=0.7, top_p=0.8)
MATH_TOKEN_RE = re.compile(r"\d+(?:\.\d+)?|[=+\-*/×÷<>]")
LATEX_RE = re.compile(r"\\(?:times|cdot)")


@dataclass(frozen=True)
class StudyOptions:
    max_tokens: int = 512          # generated-token budget of every solution (the target's own and each rollout)
    max_step_tokens: int = 256
    k: int = 1                     # draft candidates per boundary: the greedy one + k-1 sampled
    layers: int = 3
    seed: int = 0


def math_content(text: str) -> list[str]:
    """The numbers and operators a step states, in order ("1,200" → "1200", "\\times" → "*")."""
    text = LATEX_RE.sub("*", text.replace(",", ""))
    return [token.rstrip("0").rstrip(".") if "." in token else token for token in MATH_TOKEN_RE.findall(text)]


def complete(session: Session, budget: int, rng: np.random.Generator, max_step_tokens: int,
             logits_after: list[np.ndarray] | None = None) -> list[list[int]]:
    """Greedy continuation of `session`, step by step, until end-of-generation or `budget` tokens; the session then
    holds it. Returns the steps; `logits_after` collects the logits after each one."""
    steps: list[list[int]] = []
    generated = 0
    while generated < budget:
        cand = sample_steps(session, 1, GREEDY, rng, min(max_step_tokens, budget - generated))[0]
        session.adopt(cand)
        steps.append(cand.tokens)
        generated += len(cand.tokens)
        if logits_after is not None:
            logits_after.append(session.logits)
        if cand.stop == "eos" or len(session.tokens) >= session.ctx.n_ctx_seq:
            break
    return steps


@dataclass
class Walk:
    """One problem being studied: the target's own solution and what every rollout starts from."""

    problem: Problem
    prompt: list[int]
    target: Session                 # sequence 0 holds the target's own solution
    own_steps: list[list[int]]
    boundary_logits: list[np.ndarray]  # the target's logits after prompt + own_steps[:i]
    target_correct: bool


def study_problem(rt: Runtime, problem: Problem, opts: StudyOptions) -> dict:
    """Every draft step at every boundary of the target's own solution of `problem`, with signals and labels."""
    model, rng = rt.model("target"), np.random.default_rng(opts.seed)
    prompt = rt.prompt_tokens(problem.question)
    target = rt.session("target", n_seq=2, hidden=True)
    draft = rt.session("draft", n_seq=opts.k, layers=opts.layers, hidden=True)
    capture = draft.ctx.hook

    start = time.perf_counter()
    target.sync(prompt)
    walk = Walk(problem, prompt, target, [], [target.logits], False)
    walk.own_steps = complete(target, opts.max_tokens, rng, opts.max_step_tokens, walk.boundary_logits)
    target_s = time.perf_counter() - start
    n_own = len(target.tokens) - len(prompt)
    target_answer = extract_answer(model.detokenize(target.tokens[len(prompt):]))
    walk.target_correct = is_correct(target_answer, problem.gold)

    grounding, rows, context = Grounding.start(capture), [], list(prompt)
    for index, own in enumerate(walk.own_steps):
        draft.sync(context)  # the prompt, then each step of the target's own solution
        grounding.absorb_prefill()
        budget = min(opts.max_step_tokens, opts.max_tokens - (len(context) - len(prompt)))
        start = time.perf_counter()
        cands = sample_steps(draft, 1, GREEDY, rng, budget, capture)
        draft_s = [time.perf_counter() - start]
        if opts.k > 1:
            start = time.perf_counter()
            cands += sample_steps(draft, opts.k - 1, SAMPLED, rng, budget, capture)
            draft_s += [(time.perf_counter() - start) / (opts.k - 1)] * (opts.k - 1)
        for number, (cand, cand_draft_s) in enumerate(zip(cands, draft_s)):
            row = label_step(rt, walk, index, context, cand, opts, rng)
            row["candidate"], row["sampled"] = number, number > 0
            row.update(grounding.signals(cand))
            row["cost_s"]["draft"] = cand_draft_s
            rows.append(row)
        context += own
    return {"problem_id": problem.id, "gold": problem.gold, "target_answer": target_answer,
            "target_correct": walk.target_correct, "target_tokens": n_own, "target_s": target_s,
            "target_s_per_token": target_s / max(n_own, 1), "n_boundaries": len(walk.own_steps), "steps": rows}


def label_step(rt: Runtime, walk: Walk, index: int, context: list[int], cand: Candidate, opts: StudyOptions,
               rng: np.random.Generator) -> dict:
    """The target's judge signals and hidden state of draft step `cand` after `context` (boundary `index`), and
    its outcome label from a greedy target rollout in sequence 1."""
    model, own = rt.model("target"), walk.own_steps[index]
    walk.target.ctx.fork(0, [1])
    start = time.perf_counter()
    rollout = Session(walk.target.ctx, tokens=list(context), seq=1, logits=walk.boundary_logits[index])
    read, _ = read_step(rollout, list(context), cand.tokens)
    judge, target_hidden = read.scores, read.hidden
    judge_s = time.perf_counter() - start

    identical = cand.tokens == own
    start = time.perf_counter()
    if identical:
        after_text = model.detokenize([token for step in walk.own_steps for token in step])
    else:
        budget = opts.max_tokens - (len(context) - len(walk.prompt)) - len(cand.tokens)
        if cand.stop != "eos" and budget > 0:
            complete(rollout, budget, rng, opts.max_step_tokens)
        after_text = model.detokenize(rollout.tokens[len(walk.prompt):])
    rollout_s = time.perf_counter() - start
    after_answer = extract_answer(after_text)
    after_correct = is_correct(after_answer, walk.problem.gold)
    label = ("harmful" if walk.target_correct and not after_correct else
             "rescue" if after_correct and not walk.target_correct else "neutral")
    text, own_text = model.detokenize(cand.tokens), model.detokenize(own)
    return {"step": index, "n_tokens": len(cand.tokens), "stop": cand.stop, "text": text, "target_step": own_text,
            "identical": identical, "says_same": math_content(text) == math_content(own_text), **judge,
            "after_answer": after_answer, "after_correct": after_correct, "label": label,
            "cost_s": {"judge": judge_s, "rollout": rollout_s},
            "draft_hidden": encode_vector(cand.embedding), "target_hidden": encode_vector(target_hidden)}


def run_study(rt: Runtime, problems: list[Problem], out_dir: Path, opts: StudyOptions, meta: dict,
              progress: bool = True) -> list[dict]:
    """Study every problem not yet in out_dir/steps.jsonl (one line per finished problem); return all rows."""
    rows_path, rows, _ = open_run(rt, Path(out_dir) / ROWS_FILE, opts, meta)
    done = {row["problem_id"] for row in rows}
    todo = [problem for problem in problems if problem.id not in done]
    with rows_path.open("a", encoding="utf-8") as rows_file, \
            tqdm(total=len(todo), desc="study", unit="problem", disable=not progress) as bar:
        for problem in todo:
            row = study_problem(rt, problem, opts)
            append_row(rows_file, row)
            rows.append(row)
            labels = [step["label"] for r in rows for step in r["steps"]]
            bar.set_postfix(steps=len(labels), harmful=labels.count("harmful"), rescue=labels.count("rescue"),
                            refresh=False)
            bar.update()
    return rows


def load_study(out_dir: str | Path) -> list[dict]:
    """The problem rows of a study folder (its steps.jsonl)."""
    return read_rows(Path(out_dir) / ROWS_FILE)


def calibrate_bounds(rt: Runtime, dataset: str, offset: int, limit: int, max_tokens: int, low: float, high: float, layers: int,
                     draft_name: str, target_name: str) -> Profile:
    """Normalisation bounds from a dev run: greedy draft steps of `dataset[offset:offset + limit]`, every one
    accepted (τ = 0), and each raw score's `low` / `high` percentiles (`verify.calibration`)."""
    problems = load_problems(dataset)[offset:offset + limit]
    if not problems:
        raise SpecGuardError(f"the dev slice {offset}..{offset + limit} of {dataset} is empty")
    logprobs, groundings = [], []
    for problem in tqdm(problems, desc="calibrating", unit="problem"):
        for step in stream(rt, problem.question, "specguard", Options(max_tokens=max_tokens, tau=0.0, layers=layers,
                                                                          adapt=False, salvage=False)):
            logprobs.append(step.scores["logprob_min"])
            groundings.append(step.scores["grounding_min"])
    lo_l, hi_l = np.percentile(logprobs, [low, high])
    lo_g, hi_g = np.percentile(groundings, [low, high])
    if not (lo_l < hi_l and lo_g < hi_g):
        raise SpecGuardError(f"{len(logprobs)} draft steps are too few to tell the score bounds apart; "
                             "raise --limit or --max-tokens")
    return Profile(logprob_lo=float(lo_l), logprob_hi=float(hi_l), grounding_lo=float(lo_g),
                   grounding_hi=float(hi_g), draft=draft_name, target=target_name,
                   notes={"dataset": dataset, "problems": f"{offset}..{offset + len(problems) - 1}",
                          "steps": len(logprobs), "percentiles": [low, high], "layers": layers})
