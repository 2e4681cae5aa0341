"""Shared fixtures: a tiny random GGUF loaded by real llama.cpp, the embedded real draft/target pair, and
`specguard-local serve` in a child process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from tiny_gguf import write_tiny_model

NATALIA = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
           "How many clips did Natalia sell altogether in April and May?")


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf", n_layer=4)


@pytest.fixture(scope="session")
def tiny_model(tiny_path):
    from specguard_local.engine import Model

    model = Model(tiny_path)
    yield model
    model.close()


@pytest.fixture(scope="session")
def real_runtime():
    """The default pair, assembled from the installed `[models]` packages on first use."""
    from specguard_local.runtime import Runtime, RuntimeConfig

    with Runtime(RuntimeConfig(n_ctx=2048)) as rt:
        yield rt


class Server:
    """`specguard-local serve` in a child process, on a free port of 127.0.0.1."""

    def __init__(self, *args: str):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "specguard_local.cli", "serve", "--port",
                                         str(self.port), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.process.poll() is None, self.process.communicate()[1]
            try:
                if self.get("/health")["status"] == "ok":
                    return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise AssertionError("the server did not come up")

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def post(self, body, headers: dict | None = None, path: str = "/v1/chat/completions") -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="POST",
                                         headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def client(self, api_key: str = "none") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0)

    def idle(self, timeout: float = 10.0) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.get("/health")["running"] == 0:
                return True
            time.sleep(0.05)
        return False

    def stop(self, signalled: bool = False) -> tuple[int, str]:
        """Ctrl-C (unless already `signalled`) and wait for the process to end."""
        if not signalled:
            self.process.send_signal(signal.SIGINT)
        try:
            _, stderr = self.process.communicate(timeout=20)
        finally:
            self.process.kill()
        return self.process.returncode, stderr


@dataclass
class TinyPair:
    rt: object            # a loaded `Runtime`
    draft: Path
    target: Path
    profile: Path         # bounds that fit random models; the taus asked for

    def args(self, n_ctx: int) -> list[str]:
        """The same pair for `specguard-local serve`."""
        return ["--draft", str(self.draft), "--target", str(self.target), "--n-ctx", str(n_ctx), "--profile",
                str(self.profile)]


@contextmanager
def open_tiny_pair(folder: Path, target_layers: int = 6, endless: bool = False, n_ctx: int = 512,
              taus: dict | None = None):
    """A tiny random draft (4 layers) and target (`target_layers`) loaded as a pair by real llama.cpp, with a
    profile for them. `endless` models never end an answer before its budget."""
    from specguard_local.runtime import Runtime, RuntimeConfig
    from specguard_local.verify.signals import Profile

    draft = write_tiny_model(folder / "draft.gguf", seed=1, n_layer=4, endless=endless)
    target = write_tiny_model(folder / "target.gguf", seed=0, n_layer=target_layers, endless=endless)
    with Runtime(RuntimeConfig(draft=str(draft), target=str(target), n_ctx=n_ctx)) as rt:
        profile = folder / "profile.json"
        Profile(-12.0, 0.0, 0.0, 1.0, **({"taus": taus} if taus else {}), draft=rt.ids["draft"],
                target=rt.ids["target"]).save(profile)
        yield TinyPair(rt, draft, target, profile)
