"""Requests decoded together (batching.py) on real llama.cpp with tiny random models: every request gets exactly the
answer it gets alone — its own logits, its own attention rows (SpecGuard's grounding and verdicts depend on them),
its own KV sequences — while their decode calls are merged."""

import functools
import threading

import pytest

from specguard_local import api, engine
from specguard_local.batching import Batcher, _Call
from specguard_local.cancel import Cancelled
from specguard_local.decoders.options import Options
from specguard_local.runtime import SlotRuntime
from conftest import open_tiny_pair

QUESTIONS = ["Tell me a long story about numbers.", "Count to ten.", "What is 2 + 2?", "Name three colours."]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    with open_tiny_pair(tmp_path_factory.mktemp("batching"), endless=True, taus={"signals": 0.5}) as pair:
        yield pair.rt, Options(max_tokens=48, max_step_tokens=12, profile=str(pair.profile), adapt=False)


def run_together(rt, jobs, batcher, n_slots, stops=None, n_seq=1):
    """Each (method, question) in its own slot, all on the batcher's decoding thread; returns every answer's steps
    (or the exception)."""
    results = [None] * len(jobs)
    stops = stops or [threading.Event() for _ in jobs]
    done = [threading.Event() for _ in jobs]

    def work(slot, method, question, opts):
        try:
            slot_rt = SlotRuntime(rt, batcher, slot, n_slots, n_seq, stops[slot])
            results[slot] = list(api.generate(slot_rt, rt.prompt_tokens(question), method, opts))
        except Exception as exc:  # handed back to the test
            results[slot] = exc
        finally:
            done[slot].set()

    # started together: with one `run` per job, the first could finish on a fast machine before the last arrives
    batcher.run(*(functools.partial(work, slot, *job) for slot, job in enumerate(jobs)))
    assert all(event.wait(60) for event in done)
    return results


def count_decodes(monkeypatch) -> list[int]:
    """Every llama_decode call from now on, as the number of sequences its batch holds tokens of."""
    sizes = []
    real_decode = engine.ll.llama_decode

    def counted(ctx, batch):
        sizes.append(len({batch.seq_id[i][0] for i in range(batch.n_tokens)}))
        return real_decode(ctx, batch)

    monkeypatch.setattr(engine.ll, "llama_decode", counted)
    return sizes


def test_merged_requests_get_the_answers_they_get_alone(pair, monkeypatch):
    rt, opts = pair
    jobs = [(method, question, opts) for method, question in
            zip(["specguard", "target", "specguard", "draft"], QUESTIONS)]
    sizes = count_decodes(monkeypatch)
    alone = [list(api.stream(rt, question, method, opts)) for method, question, opts in jobs]
    calls_alone, sizes[:] = len(sizes), []
    batcher = Batcher()
    together = run_together(rt, jobs, batcher, n_slots=4)
    # the decodes really were merged: fewer llama_decode calls, some holding several requests' sequences
    merged = sum(n > 1 for n in sizes)
    assert len(sizes) < calls_alone and merged >= 0.1 * len(sizes) and max(sizes) >= 3
    for solo, merged in zip(alone, together):
        assert [s.text for s in merged] == [s.text for s in solo]
        assert [s.verdict for s in merged] == [s.verdict for s in solo]
        assert [s.scores.get("r") for s in merged] == pytest.approx([s.scores.get("r") for s in solo])


def test_unmerged_rounds_never_mix_two_requests_in_one_decode(pair, monkeypatch):
    """`serve --deterministic`: requests still take turns in rounds, but each decode holds one request's
    sequences, so nothing about a request's batches depends on the others."""
    rt, opts = pair
    jobs = [("target", QUESTIONS[0], opts), ("specguard", QUESTIONS[1], opts), ("sd", QUESTIONS[2], opts)]
    alone = [list(api.stream(rt, question, method, opts)) for method, question, opts in jobs]
    owners = []
    real_decode = engine.ll.llama_decode

    def recorded(ctx, batch):
        owners.append({batch.seq_id[i][0] // 2 for i in range(batch.n_tokens)})  # slot of each sequence (n_seq 2)
        return real_decode(ctx, batch)

    monkeypatch.setattr(engine.ll, "llama_decode", recorded)
    together = run_together(rt, jobs, Batcher(merge=False), n_slots=3, n_seq=2)
    assert owners and all(len(slots) == 1 for slots in owners)
    assert len({next(iter(slots)) for slots in owners}) == 3  # all three requests decoded
    for solo, unmerged in zip(alone, together):
        assert [s.text for s in unmerged] == [s.text for s in solo]


def test_a_stopped_request_ends_and_the_others_go_on(pair):
    rt, opts = pair
    jobs = [("target", QUESTIONS[0], opts), ("specguard", QUESTIONS[1], opts)]
    stops = [threading.Event(), threading.Event()]
    stops[0].set()  # stopped before its first decode
    results = run_together(rt, jobs, Batcher(), n_slots=2, stops=stops)
    assert isinstance(results[0], Cancelled)
    assert [s.text for s in results[1]] == [s.text for s in api.stream(rt, QUESTIONS[1], "specguard", opts)]


def test_every_decode_runs_on_the_batchers_one_thread(pair, monkeypatch):
    # llama.cpp's OpenMP team belongs to the thread that calls llama_decode: one decoding thread keeps one team
    rt, opts = pair
    callers = []
    real_decode = engine.ll.llama_decode

    def recorded(ctx, batch):
        callers.append(threading.current_thread().name)
        return real_decode(ctx, batch)

    monkeypatch.setattr(engine.ll, "llama_decode", recorded)
    batcher = Batcher()
    jobs = [("target", QUESTIONS[0], opts), ("draft", QUESTIONS[1], opts), ("target", QUESTIONS[2], opts)]
    results = run_together(rt, jobs, batcher, n_slots=3)
    assert all(isinstance(steps, list) and steps for steps in results)
    assert callers and set(callers) == {"specguard-decode"}
    workers = [t for t in threading.enumerate() if t.name == "specguard-decode"]
    for worker in workers:
        worker.join(5)
    assert not any(worker.is_alive() for worker in workers)  # gone with the last request


def test_the_controller_under_concurrent_requests_times_only_its_own_decodes(pair, monkeypatch):
    """adapt=True in the server: answers finish, each controller reports, and a request's own clock leaves out
    the time it waited for the other requests' decodes."""
    rt, opts = pair
    adaptive = Options(**{**opts.__dict__, "adapt": True})
    clocks = []
    real_slot_runtime = SlotRuntime.__init__

    def keep_clock(self, *args, **kwargs):
        real_slot_runtime(self, *args, **kwargs)
        clocks.append(self.clock)

    monkeypatch.setattr(SlotRuntime, "__init__", keep_clock)
    results = run_together(rt, [("specguard", question, adaptive) for question in QUESTIONS[:3]], Batcher(),
                           n_slots=3)
    assert all(isinstance(steps, list) and steps for steps in results)
    assert all(steps[-1].control["adapt"] and steps[-1].control["spec_ms_per_token"] for steps in results)
    assert len(clocks) == 3 and all(clock.waited > 0 for clock in clocks)
    again = list(api.stream(rt, QUESTIONS[0], "specguard", adaptive))  # the shared memory is still sound
    assert again and again[-1].control["adapt"]


def test_a_decode_outside_the_decoding_thread_is_refused():
    # a slot's decode only makes sense as one request among the batcher's; elsewhere it must say so, not hang
    with pytest.raises(RuntimeError, match="only inside Batcher.run"):
        Batcher().decode(_Call(None, [1], [0], [0], [True]))
