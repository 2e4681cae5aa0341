"""`specguard-local serve`: a real server process on 127.0.0.1, real llama.cpp, talked to over real HTTP with the
official `openai` client (and plain HTTP where the client would hide what is sent). Tiny random models for the
protocol, the faults and the slots; the embedded pair where answers must be right."""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specguard_local import api
from specguard_local.decoders.options import SCHEMA
from conftest import Server, open_tiny_pair

QUESTION = "Tell me a long story about numbers."
N_CTX = 2048
LONG = 1800  # tokens: a stream still running when the test acts on it


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    # endless: answers run to the budget
    with open_tiny_pair(tmp_path_factory.mktemp("serve"), target_layers=32, endless=True, n_ctx=N_CTX,
                   taus={"signals": 0.5}) as pair:
        yield pair.rt, pair.args(N_CTX)


@pytest.fixture(scope="module")
def tiny_server(tiny_pair):
    server = Server(*tiny_pair[1], "--parallel", "2", "--queue", "0", "--max-tokens", "48")
    yield server
    server.stop()


def ask(method="target", content=QUESTION, **extra) -> dict:
    return {"model": method, "messages": [{"role": "user", "content": content}], **extra}


@pytest.mark.parametrize("method", ["target", "specguard", "sd"])
def test_answers_equal_solve_streamed_or_not(tiny_pair, tiny_server, method):
    rt, _ = tiny_pair
    expected = api.solve(QUESTION, method, rt, max_tokens=48, profile=tiny_pair[1][-1])
    client = tiny_server.client()
    whole = client.chat.completions.create(model=method, messages=[{"role": "user", "content": QUESTION}],
                                           max_tokens=48)
    assert whole.choices[0].message.content == expected.text
    assert whole.choices[0].finish_reason == "length"  # 48 tokens of a random model: never an end of generation
    assert whole.usage.completion_tokens == expected.stats["tokens"]
    extension = whole.model_extra["specguard"]
    assert [s["text"] for s in extension["steps"]] == [s.text for s in expected.steps]
    assert [s["verdict"] for s in extension["steps"]] == [s.verdict for s in expected.steps]
    assert extension["stats"]["tokens"] == expected.stats["tokens"]

    chunks = list(client.chat.completions.create(model=method, messages=[{"role": "user", "content": QUESTION}],
                                                 max_tokens=48, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    steps = [c.model_extra["specguard"]["step"] for c in chunks if "step" in (c.model_extra.get("specguard") or {})]
    assert [s["source"] for s in steps] == [s.source for s in expected.steps]
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].model_extra["specguard"]["stats"]["steps"] == len(expected.steps)
    assert chunks[-1].usage.completion_tokens == expected.stats["tokens"]


def test_models_and_health(tiny_server):
    ids = [m.id for m in tiny_server.client().models.list()]
    assert {"specguard", "target", "draft", "sd", "trispec", "rsd"} <= set(ids)
    health = tiny_server.get("/health")
    assert health["status"] == "ok" and health["slots"] == 2


def test_stop_strings_cut_the_answer(tiny_pair, tiny_server):
    full = tiny_server.client().chat.completions.create(**ask(max_tokens=48)).choices[0].message.content
    stop = full[10:13]
    cut = tiny_server.client().chat.completions.create(**ask(max_tokens=48, stop=[stop]))
    assert cut.choices[0].message.content == full[:full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = tiny_server.client().chat.completions.create(**ask(max_tokens=48, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == full[:full.index(stop)]


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (ask("gpt-4"), "model"),
    ({"model": "target", "messages": []}, "messages"),
    ({"model": "target"}, "messages"),
    (ask(content="word " * 2000), None),                # longer than the context
    (ask(max_tokens=0), "max_tokens"),
    (ask(temperature=-1), "temperature"),
    (ask("specguard", k=5), "k"),                        # more candidates than --max-k
    (ask("specguard", tau="high"), "tau"),
    (ask("specguard", verifier="oracle"), None),         # found by the decoder, still before any step
    (ask(stop=["a", "b", "c", "d", "e"]), "stop"),
    (ask("sd", seed=-1), None),                          # was a 500 ("expected non-negative integer")
    (ask("specguard", draft_p_min=2.0), None),
])
def test_bad_input_is_a_400_and_the_server_goes_on(tiny_server, body, param):
    status, answer = tiny_server.post(body)
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["message"]
    if param:
        assert answer["error"]["param"] == param
    status, answer = tiny_server.post(ask(max_tokens=4))
    assert status == 200 and answer["choices"][0]["message"]["content"]


def test_a_disconnected_stream_frees_its_slot_and_a_full_server_says_503(tiny_server):
    streams = [tiny_server.client().chat.completions.create(**ask(max_tokens=LONG, stream=True)) for _ in range(2)]
    for stream in streams:
        next(iter(stream))  # both slots are decoding
    status, answer = tiny_server.post(ask(max_tokens=4))  # --queue 0: nobody may wait
    assert status == 503 and answer["error"]["code"] == "server_busy"
    for stream in streams:
        stream.close()  # the client goes away mid-answer
    assert tiny_server.idle(timeout=5.0)  # both decodes stopped at once
    status, answer = tiny_server.post(ask(max_tokens=4))
    assert status == 200


def test_a_port_in_use_is_one_clean_error(tiny_pair):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = subprocess.run([sys.executable, "-m", "specguard_local.cli", "serve", *tiny_pair[1], "--port",
                               str(taken.getsockname()[1])], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("error: cannot listen on 127.0.0.1:") and "--port" in done.stderr


def test_api_key_is_enforced(tiny_pair):
    server = Server(*tiny_pair[1], "--api-key", "sesame")
    try:
        with pytest.raises(openai.AuthenticationError):
            server.client("wrong").chat.completions.create(**ask(max_tokens=4))
        status, _ = server.post(ask(max_tokens=4))
        assert status == 401
        answer = server.client("sesame").chat.completions.create(**ask(max_tokens=4))
        assert answer.choices[0].message.content
        assert server.get("/health")["status"] == "ok"  # health needs no key
        check = {"question": "Count.", "steps": ["one"]}
        assert server.post(check, path="/v1/check")[0] == 401
        assert server.post(check, {"Authorization": "Bearer sesame"}, path="/v1/check")[0] == 200
        with urllib.request.urlopen(server.url + "/") as page:  # the page itself is public; its calls carry the key
            assert page.status == 200 and b"specguard-local" in page.read()
    finally:
        server.stop()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_running_requests_and_exits_0(tiny_pair, sig):
    server = Server(*tiny_pair[1])
    stream = server.client().chat.completions.create(**ask(max_tokens=LONG, stream=True))
    chunks = iter(stream)
    next(chunks)
    start = time.time()
    server.process.send_signal(sig)
    with pytest.raises(openai.APIError, match="shutting down"):  # the stream ends with an error event
        for _ in chunks:
            pass
    code, stderr = server.stop(signalled=True)
    assert code == 0, stderr
    assert time.time() - start < 10
    assert "Traceback" not in stderr


@pytest.mark.real
def test_concurrent_clients_all_get_right_answers(real_runtime):
    server = Server("--parallel", "4", "--n-ctx", "1024")
    questions = [(f"What is {a} + {b}? Answer with the number only.", a + b) for a, b in
                 [(12, 30), (21, 13), (40, 25), (100, 23), (41, 17), (20, 22), (51, 36), (30, 15)]]
    try:
        expected = api.solve(questions[0][0], "specguard", real_runtime, max_tokens=96)
        answer = server.client().chat.completions.create(
            model="specguard", messages=[{"role": "user", "content": questions[0][0]}], max_tokens=96)
        assert answer.choices[0].message.content == expected.text  # alone on the server: exactly `solve`

        def run(i: int) -> str:
            return server.client().chat.completions.create(
                model=["target", "specguard"][i % 2], messages=[{"role": "user", "content": questions[i][0]}],
                max_tokens=160).choices[0].message.content

        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # 8 requests from 4 clients, decoded together
            answers = list(pool.map(run, range(8)))
        for (question, total), text in zip(questions, answers):
            assert str(total) in text, (question, text)
    finally:
        server.stop()


def test_a_short_soak_loses_nothing(tiny_pair):
    """The short version of `scripts/soak_serve.py`: 8 clients, mixed methods, streamed and whole answers, dropped
    streams and bad bodies — no 5xx, nothing lost, every finished answer checked against the same request alone,
    every slot free at the end."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    from soak_serve import soak

    server = Server(*tiny_pair[1], "--parallel", "4", "--queue", "8", "--max-tokens", "24", "--deterministic")
    try:
        report = soak(server.port, server.process.pid, clients=8, requests=48, max_tokens=12, seed=1,
                      time_limit=300)
    finally:
        server.stop()
    assert not report.stopped_by_time_limit and report.sent == 48
    assert report.counts.get("completed", 0) >= 20 and report.counts.get("rejected", 0) >= 1
    assert report.counts.get("cancelled", 0) >= 1
    assert "server_error" not in report.counts and "failed" not in report.counts, report.failures
    # every finished answer was sent again alone: with --deterministic no decode is merged, so none may differ
    assert report.deterministic and report.solo_checked == report.counts["completed"]
    assert report.differ_from_solo == 0, report.differ_by_method
    assert report.free_slots_at_end == report.slots == 4


ODD_VALUES = st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=6) | \
    st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["target", "specguard", "sd", "draft", "trispec", "rsd", "nope"]),
       options=st.dictionaries(st.sampled_from(sorted(name for name in SCHEMA if name != "max_tokens")
                                               + ["stream", "stop", "n", "seed", "stream_options"]),
                               ODD_VALUES, max_size=3))
def test_any_option_values_over_http_give_200_or_a_4xx(tiny_server, method, options):
    if options.get("stream") is True:  # a valid stream answers in events; streams have their own tests
        options["stream"] = False
    status, answer = tiny_server.post({**ask(method, max_tokens=2), **options})
    assert status == 200 or (400 <= status < 500 and answer["error"]["message"] and answer["error"]["type"]), answer


def test_check_judges_a_students_steps_over_http(tiny_server):
    steps = ["1 + 2 = 3", "3 + 4 = 8", "so 8"]
    status, answer = tiny_server.post({"question": "Count on.", "steps": steps}, path="/v1/check")
    assert status == 200, answer
    assert answer["object"] == "check" and [s["text"] for s in answer["steps"]] == steps
    assert answer["first_doubtful"] == 1 and answer["hint"] == "3 + 4 = 7"
    assert answer["steps"][1]["reason"] == "3 + 4 = 7, not 8" and answer["steps"][1]["evidence"] == "arithmetic"
    status, keyed = tiny_server.post({"question": "Count on.", "solution": "\n\n".join(steps[:1]), "answer": 3},
                                     path="/v1/check")
    assert status == 200 and keyed["first_doubtful"] is None and keyed["hint"] is None and keyed["answer"] == "3"
    assert keyed["target_answers"] == ["3"]   # the key decides


@pytest.mark.parametrize("body, param", [
    (b"{not json", None), ([], None), ({"steps": ["a"]}, "question"), ({"question": "q"}, "steps"),
    ({"question": "q", "steps": []}, "steps"), ({"question": "q", "steps": ["a", " "]}, "steps"),
    ({"question": "q", "steps": [1]}, "steps"), ({"question": "q", "steps": ["a"], "answer": "many"}, "answer"),
    ({"question": "q", "steps": ["a"], "answer": True}, "answer"),
    ({"question": "q", "steps": ["a"] * 65}, "steps"),
])
def test_a_bad_check_is_a_400(tiny_server, body, param):
    status, answer = tiny_server.post(body, path="/v1/check")
    assert status == 400 and answer["error"]["message"] and answer["error"]["param"] == param

