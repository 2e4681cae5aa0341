"""Loaded models and their reusable contexts: what every decoder runs on. Load once, solve many questions."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from . import models
from .batching import Batcher, RequestClock, SlotContext
from .capture import Capture, last_layers
from .engine import Context, Model
from .errors import SpecGuardError
from .generation import Session

SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class RuntimeConfig:
    draft: str = models.DEFAULT_DRAFT
    target: str = models.DEFAULT_TARGET
    models_dir: str | None = None
    n_ctx: int = 4096          # tokens per sequence
    n_threads: int | None = None
    n_gpu_layers: int = 0


class Runtime:
    """The draft/target pair (validated to share a vocabulary) and a cache of contexts keyed by their shape."""

    def __init__(self, config: RuntimeConfig = RuntimeConfig()):
        self.config = config
        self.paths = {role: models.resolve(spec, config.models_dir)
                      for role, spec in (("draft", config.draft), ("target", config.target))}
        self.ids = {role: models.model_id(path) for role, path in self.paths.items()}
        infos = {role: models.inspect_gguf(path) for role, path in self.paths.items()}
        models.check_pair(infos["draft"], infos["target"])
        self._models: dict[str, Model] = {}
        self._contexts: dict[tuple, Context] = {}
        # what decoders learn about this machine and pair across questions (SpecGuard's cost-aware controller)
        self.clock = time.perf_counter  # one process, one request at a time: the wall clock
        self.memory: dict[tuple, object] = {}

    def model(self, role: str) -> Model:
        if role not in self._models:
            self._models[role] = Model(self.paths[role], n_gpu_layers=self.config.n_gpu_layers)
        return self._models[role]

    def context(self, role: str, n_seq: int = 1, layers: int = 0, hidden: bool = False) -> Context:
        """The (cached) context of `role` with `n_seq` sequences; `layers` > 0 captures the attention of that many
        last layers, `hidden` the final hidden states (flash attention is then off)."""
        key = (role, n_seq, layers, hidden)
        if key not in self._contexts:
            model = self.model(role)
            hook = Capture(last_layers(model.n_layer, layers) if layers else [], hidden) if layers or hidden else None
            self._contexts[key] = Context(model, n_seq=n_seq, n_ctx_seq=self.config.n_ctx,
                                          n_threads=self.config.n_threads, hook=hook)
        return self._contexts[key]

    def session(self, role: str, n_seq: int = 1, layers: int = 0, hidden: bool = False) -> Session:
        """An empty session on the context of that shape (see `context`)."""
        ctx = self.context(role, n_seq, layers, hidden)
        ctx.clear()
        return Session(ctx)

    def prompt_tokens(self, question: str) -> list[int]:
        """The chat prompt of one question, after the product's system prompt."""
        if not question.strip():
            raise SpecGuardError("the question is empty")
        return self.chat_tokens([("user", question.strip())])

    def chat_tokens(self, messages: list[tuple[str, str]]) -> list[int]:
        """(role, content) messages rendered with the model's chat template; without a system message, the product's
        system prompt (step-by-step reasoning, answer in \\boxed{}) comes first."""
        if not any(role == "system" for role, _ in messages):
            messages = [("system", SYSTEM_PROMPT), *messages]
        model = self.model("draft")
        tokens = model.tokenize(model.chat_prompt(messages))
        if len(tokens) >= self.config.n_ctx:
            raise SpecGuardError(f"the prompt is {len(tokens)} tokens, more than the context of "
                                 f"{self.config.n_ctx} tokens; shorten it or raise --n-ctx")
        return tokens

    def close(self) -> None:
        for ctx in self._contexts.values():
            ctx.close()
        for model in self._models.values():
            model.close()
        self._contexts.clear()
        self._models.clear()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SlotRuntime:
    """One request's share of a runtime that serves several at once (`specguard-local serve`): sessions on the
    request's own `n_seq` sequences of shared contexts sized for `n_slots` requests, every decode merged with the
    other requests' by `batcher` (see `batching`). Decoders take it wherever they take a `Runtime`."""

    def __init__(self, shared: Runtime, batcher: Batcher, slot: int, n_slots: int, n_seq: int,
                 stop: threading.Event):
        self.shared, self.batcher, self.slot, self.n_slots, self.n_seq, self.stop = (
            shared, batcher, slot, n_slots, n_seq, stop)
        self.config, self.ids, self.memory = shared.config, shared.ids, shared.memory
        self.clock = RequestClock()  # wall time less the waits for other requests' decodes

    def model(self, role: str) -> Model:
        return self.shared.model(role)

    def prompt_tokens(self, question: str) -> list[int]:
        return self.shared.prompt_tokens(question)

    def chat_tokens(self, messages: list[tuple[str, str]]) -> list[int]:
        return self.shared.chat_tokens(messages)

    def session(self, role: str, n_seq: int = 1, layers: int = 0, hidden: bool = False) -> Session:
        if n_seq > self.n_seq:
            raise SpecGuardError(f"{n_seq} candidates per step need {n_seq} sequences per request; the server has "
                                 f"{self.n_seq} (start it with --max-k {n_seq})")
        shared = self.shared.context(role, self.n_slots * self.n_seq, layers, hidden)  # on the decoding thread
        ctx = SlotContext(shared, self.batcher, self.slot * self.n_seq, self.n_seq, self.stop, self.clock)
        ctx.clear()
        return Session(ctx)
