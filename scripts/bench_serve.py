"""Throughput of `specguard-local serve` with 1, 2 and 4 concurrent clients, as ratios to one client in the same run.

One server (`--parallel 4`) on the default pair; for each method (target, specguard) and each number of clients,
the same GSM8K questions are sent by that many clients at once (each takes the next question when its answer is
in). Reported per setting: total completion tokens/s, mean and worst request latency, and tokens/s relative to
one client of the same method in the same repeat. With `--llama-server PATH` (a `llama-server` binary built from
the pinned sdist), llama.cpp's own server with `-np 4` on the target model answers the same requests as the anchor.
With `--in-process`, one client of `specguard-local serve` alternates question by question with the same question
answered in this process by `api.solve` on a loaded `Runtime` (no server): the anchor for one client, measured so
that the machine's drift hits both alike. With `--repeats R` every
setting runs R times, interleaved (the servers stay up), and the report gives medians.

    python scripts/bench_serve.py [--requests 8] [--max-tokens 128] [--repeats 1] [--out scripts/results/serve]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from statistics import median

import openai

from specguard_local import api, models
from specguard_local.bench import machine
from specguard_local.datasets import load_problems
from specguard_local.engine import available_cores
from specguard_local.runtime import Runtime, RuntimeConfig


# llama-server keeps each slot's last prompt and reuses the longest cached prefix of a new one: with the same
# questions sent in every repeat it would prefill nothing after the first (measured: 26.6 tokens/s against 20.7 in
# the first repeat); our server prefills every prompt, so the anchor does too
LLAMA_SERVER_OPTIONS = {"cache_prompt": False}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], port: int) -> subprocess.Popen:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{command[0]} exited: {process.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                if response.status == 200:
                    return process
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"{command[0]} did not come up on port {port}")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def start_specguard(parallel: int, threads: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    return start([sys.executable, "-m", "specguard_local.cli", "serve", "--port", str(port), "--parallel",
                  str(parallel), "--threads", threads], port), port


def start_llama_server(binary: str, parallel: int, threads: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    target = models.resolve(models.DEFAULT_TARGET, None)
    return start([binary, "-m", str(target), "--port", str(port), "-np", str(parallel), "-c", str(4096 * parallel),
                  "-t", threads, "--no-webui"], port), port


def run_clients(port: int, model: str, questions: list[str], n_clients: int, max_tokens: int,
                extra: dict | None = None) -> dict:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=900)

    def one(question: str) -> tuple[int, float]:
        begin = time.perf_counter()
        answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                max_tokens=max_tokens, temperature=0, extra_body=extra)
        return answer.usage.completion_tokens, time.perf_counter() - begin

    begin = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n_clients) as pool:
        results = list(pool.map(one, questions))
    wall = time.perf_counter() - begin
    tokens = sum(n for n, _ in results)
    latencies = [s for _, s in results]
    return {"clients": n_clients, "requests": len(questions), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "latency_mean_s": sum(latencies) / len(latencies),
            "latency_max_s": max(latencies)}


def run_in_process(rt, method: str, question: str, max_tokens: int) -> dict:
    """One question answered in this process by `api.solve`, timed like one request to a server."""
    start = time.perf_counter()
    tokens = api.solve(question, method, rt, max_tokens=max_tokens).stats["tokens"]
    wall = time.perf_counter() - start
    return {"clients": 1, "requests": 1, "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "latency_mean_s": wall, "latency_max_s": wall}


def combined(runs: list[dict]) -> dict:
    """Runs of one request each, one after another, as one run of one client."""
    tokens, wall = sum(r["tokens"] for r in runs), sum(r["wall_s"] for r in runs)
    return {"clients": 1, "requests": len(runs), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "latency_mean_s": wall / len(runs), "latency_max_s": max(r["wall_s"] for r in runs)}


def run_paired(rt, port: int, method: str, questions: list[str], max_tokens: int, flip: bool) -> tuple[dict, dict]:
    """One client of the server and in-process decoding, question by question in alternation (which goes first
    alternates too), so that the machine's drift over minutes hits both alike."""
    served, local = [], []
    for index, question in enumerate(questions):
        pair = [lambda: served.append(run_clients(port, method, [question], 1, max_tokens)),
                lambda: local.append(run_in_process(rt, method, question, max_tokens))]
        for run in pair[::-1] if (index + flip) % 2 else pair:
            run()
    return combined(served), combined(local)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=8, help="GSM8K test questions per setting")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--clients", default="1,2,4")
    parser.add_argument("--methods", default="target,specguard")
    parser.add_argument("--llama-server", help="path to llama.cpp's llama-server binary (the anchor)")
    parser.add_argument("--in-process", action="store_true",
                        help="also answer the questions in this process, one after another (the one-client anchor)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every setting this many times, interleaved; the report gives medians")
    parser.add_argument("--out", default="scripts/results/serve")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    questions = [p.question for p in load_problems("gsm8k", limit=args.requests)]
    threads = str(available_cores())
    rows = []

    servers = {"specguard-local": start_specguard(max(clients), threads)}
    try:
        if args.llama_server:
            servers["llama-server"] = start_llama_server(args.llama_server, max(clients), threads)
        settings = [(name, method) for name in servers
                    for method in (args.methods.split(",") if name == "specguard-local" else ["target"])]
        for name, method in settings:
            run_clients(servers[name][1], method, questions[:1], 1, 16)  # warm-up
        rt = Runtime(RuntimeConfig()) if args.in_process else None
        for method in args.methods.split(",") if rt else []:
            run_in_process(rt, method, questions[0], 16)  # warm-up
        for repeat in range(args.repeats):  # interleaved: every setting once per repeat
            for name, method in settings:
                for n in clients:
                    if rt and name == "specguard-local" and n == 1:
                        served, local = run_paired(rt, servers[name][1], method, questions, args.max_tokens,
                                                   flip=repeat % 2 == 1)
                        rows.append({"server": "in-process", "method": method, "repeat": repeat, **local})
                    else:
                        served = run_clients(servers[name][1], method, questions, n, args.max_tokens,
                                             LLAMA_SERVER_OPTIONS if name == "llama-server" else None)
                    rows.append({"server": name, "method": method, "repeat": repeat, **served})
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        for process, _ in servers.values():
            stop(process)

    for row in rows:  # paired with the one-client run of the same repeat
        one = next(r for r in rows if (r["server"], r["method"], r["repeat"], r["clients"])
                   == (row["server"], row["method"], row["repeat"], 1))
        row["throughput_vs_1_client"] = row["tokens_per_s"] / one["tokens_per_s"]
        anchor = next((r for r in rows if (r["server"], r["method"], r["repeat"])
                       == ("in-process", row["method"], row["repeat"])), None)
        if anchor is not None and row["clients"] == 1:
            row["vs_in_process"] = row["tokens_per_s"] / anchor["tokens_per_s"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["python", *sys.argv]), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "max_tokens": args.max_tokens}
    (out / "rows.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["| server | method | clients | tokens/s | vs 1 client (each repeat) | 1 client vs in-process (each repeat) "
             "| mean latency (s) | worst latency (s) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for key in dict.fromkeys((r["server"], r["method"], r["clients"]) for r in rows):
        runs = [r for r in rows if (r["server"], r["method"], r["clients"]) == key]
        ratios = ", ".join(f"{r['throughput_vs_1_client']:.2f}×" for r in runs)
        anchored = [r["vs_in_process"] for r in runs if "vs_in_process" in r]
        vs_anchor = (f"**{median(anchored):.2f}×** ({', '.join(f'{a:.2f}×' for a in anchored)})" if anchored
                     else "–")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {median(r['tokens_per_s'] for r in runs):.1f} | "
                     f"**{median(r['throughput_vs_1_client'] for r in runs):.2f}×** ({ratios}) | {vs_anchor} | "
                     f"{median(r['latency_mean_s'] for r in runs):.1f} | {max(r['latency_max_s'] for r in runs):.1f} |")
    (out / "report.md").write_text(f"# Serving throughput\n\n`{meta['command']}` · {meta['date']} · "
                                   f"{meta['machine']['cpu']}, {meta['machine']['cores']} cores\n\n"
                                   + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
