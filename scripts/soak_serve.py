"""A soak test of `specguard-local serve`: many clients for a fixed number of requests, with mid-stream
disconnects and bad requests mixed in; nothing may be lost, leak or answer differently than it does alone.

Traffic goes to 127.0.0.1 only; the run is bounded in requests and in time (`--time-limit`) and stops by itself.
N clients (threads) share one seeded list of requests: methods target / specguard / sd (greedy; specguard with
adapt=false, since the controller's choices depend on wall time), streamed or whole, ~20% streamed requests that the
client drops after the first chunk, ~10% malformed or out-of-range bodies. Reported: requests sent, completed,
cancelled by the client, rejected (4xx, 503), 5xx (must be 0); completed answers that differ from the same request
sent alone afterwards (must be 0); the server's resident memory at start, after warm-up and at the end; free slots
at the end (must be all); p50 / p95 latency of completed requests.

    python scripts/soak_serve.py [--clients 8] [--requests 500] [--parallel 4] [--queue 8] [--max-tokens 32] \
        [--out scripts/results/soak] [-- --deterministic]

Answers equal their solo answers only when the server runs with `--deterministic`: merged decodes change llama.cpp's
numerics (`batching`), so without it a few greedy answers take the other side of a near-tie under load.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from statistics import quantiles

QUESTIONS = ["What is 17 * 23?", "Tom has 3 boxes with 12 apples each. He eats 5. How many are left?",
             "A train travels 60 km in 45 minutes. What is its speed in km/h?", "What is 2 + 2?",
             "Sara buys 4 pens at $1.25 each. How much does she pay?", "What is half of 48?"]
METHODS = ("target", "specguard", "sd")
BAD_BODIES = [b"{not json", {"model": "gpt-4"}, {"model": "target", "messages": []}, {"tau": -1}, {"k": 99},
              {"seed": -1}, {"max_tokens": 0}, {"temperature": "hot"}, {"model": "specguard", "verifier": "oracle"},
              {"model": ["target"]}, {"messages": [{"role": [], "content": 1}]}]


@dataclass
class Outcome:
    kind: str                 # completed, cancelled, rejected, unavailable (503), server_error (5xx), failed
    status: int = 0
    latency_s: float = 0.0
    key: str = ""             # what identifies a completed greedy request, to send it again alone
    text: str = ""


@dataclass
class Plan:
    body: dict | bytes
    stream: bool = False
    disconnect: bool = False

    @property
    def key(self) -> str:
        return json.dumps([self.body, self.stream], sort_keys=True) if isinstance(self.body, dict) else ""


def plans(n: int, max_tokens: int, seed: int) -> list[Plan]:
    """The seeded mix: every 10th request malformed or out of range, every 5th (of the rest) a stream dropped after
    its first chunk, the others streamed or whole at random; methods and questions at random."""
    rng, out = random.Random(seed), []
    for index in range(n):
        method, question = rng.choice(METHODS), rng.choice(QUESTIONS)
        body: dict | bytes = {"model": method, "messages": [{"role": "user", "content": question}],
                              "max_tokens": max_tokens, "temperature": 0}
        if method == "specguard":
            body["adapt"] = False
        if index % 10 == 9:
            bad = BAD_BODIES[(index // 10) % len(BAD_BODIES)]
            out.append(Plan(bad if isinstance(bad, bytes) else {**body, **bad}))
        elif index % 5 == 2:
            out.append(Plan(body, stream=True, disconnect=True))
        else:
            out.append(Plan(body, stream=rng.random() < 0.5))
    return out


def send(port: int, plan: Plan, timeout: float = 600) -> Outcome:
    """One request on its own connection; a streamed one is read event by event (or dropped after the first)."""
    body = plan.body if isinstance(plan.body, bytes) else json.dumps({**plan.body, "stream": plan.stream}).encode()
    start, text = time.perf_counter(), ""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            response.read()
            kind = ("unavailable" if response.status == 503 else "server_error" if response.status >= 500
                    else "rejected")
            return Outcome(kind, response.status)
        if not plan.stream:
            answer = json.loads(response.read())
            return Outcome("completed", 200, time.perf_counter() - start, plan.key,
                           answer["choices"][0]["message"]["content"])
        for line in response:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                return Outcome("server_error", 200)
            text += "".join(choice["delta"].get("content") or "" for choice in event.get("choices", []))
            if plan.disconnect:
                return Outcome("cancelled", 200)
        return Outcome("completed", 200, time.perf_counter() - start, plan.key, text)
    except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
        return Outcome("failed", 0, time.perf_counter() - start, text=f"{exc!r} after {text!r}")
    finally:
        conn.close()


def get(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Report:
    sent: int = 0
    counts: dict = field(default_factory=dict)
    differ_from_solo: int = 0
    differ_by_method: dict = field(default_factory=dict)
    solo_checked: int = 0
    rss_mib: dict = field(default_factory=dict)
    slots: int = 0
    deterministic: bool = False   # the server never merged one request's decodes with another's
    free_slots_at_end: int = 0
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    wall_s: float = 0.0
    stopped_by_time_limit: bool = False
    failures: list = field(default_factory=list)


def soak(port: int, pid: int | None, clients: int, requests: int, max_tokens: int, seed: int = 0,
         time_limit: float = 3600, warmup: float = 0.1) -> Report:
    """Run the mix against a server already up on 127.0.0.1:`port` (process `pid`, for its memory)."""
    todo, report, outcomes, lock = plans(requests, max_tokens, seed), Report(), [], threading.Lock()
    deadline, start = time.time() + time_limit, time.perf_counter()
    report.rss_mib["start"] = resident_mib(pid) if pid else 0.0
    warm_at = max(1, int(warmup * requests))
    queue = iter(enumerate(todo))

    def client() -> None:
        while time.time() < deadline:
            with lock:
                item = next(queue, None)
            if item is None:
                return
            index, plan = item
            outcome = send(port, plan)
            with lock:
                outcomes.append(outcome)
                if len(outcomes) == warm_at and pid:
                    report.rss_mib["after_warmup"] = resident_mib(pid)

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    report.stopped_by_time_limit = time.time() >= deadline
    report.wall_s = time.perf_counter() - start
    report.sent = len(outcomes)
    for outcome in outcomes:
        report.counts[outcome.kind] = report.counts.get(outcome.kind, 0) + 1
    report.failures = [o.text for o in outcomes if o.kind == "failed"][:5]
    idle_deadline = time.time() + 60  # dropped streams free their slots at their next decode
    while time.time() < idle_deadline and get(port, "/health")["running"]:
        time.sleep(0.2)
    health = get(port, "/health")
    report.slots, report.free_slots_at_end = health["slots"], health["slots"] - health["running"]
    report.deterministic = health.get("deterministic", False)
    if pid:
        report.rss_mib["end"] = resident_mib(pid)
    latencies = sorted(o.latency_s for o in outcomes if o.kind == "completed")
    if len(latencies) >= 2:
        cuts = quantiles(latencies, n=20)
        report.latency_p50_s, report.latency_p95_s = cuts[9], cuts[18]
    solo: dict[str, str] = {}
    for outcome in outcomes:  # every distinct completed request once more, alone
        if outcome.kind != "completed" or not outcome.key:
            continue
        if outcome.key not in solo:
            body, stream = json.loads(outcome.key)
            solo[outcome.key] = send(port, Plan(body, stream)).text
        report.solo_checked += 1
        if outcome.text != solo[outcome.key]:
            method = json.loads(outcome.key)[0]["model"]
            report.differ_from_solo += 1
            report.differ_by_method[method] = report.differ_by_method.get(method, 0) + 1
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--queue", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=3600, help="seconds; the run stops by itself")
    parser.add_argument("--out", default="scripts/results/soak")
    parser.add_argument("server_args", nargs="*", help="more `serve` arguments (after --), e.g. --draft/--target")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_serve import free_port, start, stop

    from specguard_local.bench import machine

    port = free_port()
    server = start([sys.executable, "-m", "specguard_local.cli", "serve", "--port", str(port), "--parallel",
                    str(args.parallel), "--queue", str(args.queue), *args.server_args], port)
    try:
        report = soak(port, server.pid, args.clients, args.requests, args.max_tokens, args.seed, args.time_limit)
    finally:
        stop(server)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"command": " ".join(sys.argv), "machine": machine(), "date": datetime.now(timezone.utc).isoformat(),
              **asdict(report)}
    (out / "soak.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    ok = (not report.counts.get("server_error") and not report.counts.get("failed") and not report.differ_from_solo
          and report.free_slots_at_end == report.slots)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
