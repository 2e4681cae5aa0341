"""Throughput of `specguard-local serve` with 1, 2 and 4 concurrent clients, as ratios to one client in the same run.

One server (`--parallel 4`) on the default pair; for each method (target, specguard) and each number of clients,
the same GSM8K questions are sent by that many clients at once (each takes the next question when its answer is
in). Reported per setting: total completion tokens/s, mean and worst request latency, and tokens/s relative to
one client of the same method. With `--llama-server PATH` (a `llama-server` binary built from the pinned sdist),
llama.cpp's own server with `-np 4` on the target model answers the same requests as the anchor.

    python scripts/bench_serve.py [--requests 8] [--max-tokens 128] [--out scripts/results/serve]
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

import openai

from specguard_local import models
from specguard_local.bench import machine
from specguard_local.datasets import load_problems
from specguard_local.engine import available_cores


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


def run_clients(port: int, model: str, questions: list[str], n_clients: int, max_tokens: int) -> dict:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=900)

    def one(question: str) -> tuple[int, float]:
        begin = time.perf_counter()
        answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                max_tokens=max_tokens, temperature=0)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=8, help="GSM8K test questions per setting")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--clients", default="1,2,4")
    parser.add_argument("--methods", default="target,specguard")
    parser.add_argument("--llama-server", help="path to llama.cpp's llama-server binary (the anchor)")
    parser.add_argument("--out", default="scripts/results/serve")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    questions = [p.question for p in load_problems("gsm8k", limit=args.requests)]
    threads = str(available_cores())
    rows = []

    port = free_port()
    server = start([sys.executable, "-m", "specguard_local.cli", "serve", "--port", str(port), "--parallel",
                    str(max(clients)), "--threads", threads], port)
    try:
        for method in args.methods.split(","):
            run_clients(port, method, questions[:1], 1, 16)  # warm-up
            for n in clients:
                rows.append({"server": "specguard-local", "method": method,
                             **run_clients(port, method, questions, n, args.max_tokens)})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        stop(server)
    if args.llama_server:
        port = free_port()
        target = models.resolve(models.DEFAULT_TARGET, None)
        server = start([args.llama_server, "-m", str(target), "--port", str(port), "-np", str(max(clients)),
                        "-c", str(4096 * max(clients)), "-t", threads, "--no-webui"], port)
        try:
            run_clients(port, "target", questions[:1], 1, 16)
            for n in clients:
                rows.append({"server": "llama-server", "method": "target",
                             **run_clients(port, "target", questions, n, args.max_tokens)})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            stop(server)

    for row in rows:
        one = next(r for r in rows if r["server"] == row["server"] and r["method"] == row["method"]
                   and r["clients"] == 1)
        row["throughput_vs_1_client"] = row["tokens_per_s"] / one["tokens_per_s"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["python", *sys.argv]), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "max_tokens": args.max_tokens}
    (out / "rows.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["| server | method | clients | tokens/s | vs 1 client | mean latency (s) | worst latency (s) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['server']} | {r['method']} | {r['clients']} | {r['tokens_per_s']:.1f} | "
              f"{r['throughput_vs_1_client']:.2f}× | {r['latency_mean_s']:.1f} | {r['latency_max_s']:.1f} |"
              for r in rows]
    (out / "report.md").write_text(f"# Serving throughput\n\n`{meta['command']}` · {meta['date']} · "
                                   f"{meta['machine']['cpu']}, {meta['machine']['cores']} cores\n\n"
                                   + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
