"""Loaded models and their reusable contexts: what every decoder runs on. Load once, solve many questions."""

from __future__ import annotations

from dataclasses import dataclass

from . import models
from .attention import Capture, last_layers
from .decoders.base import Session
from .engine import Context, Model
from .errors import SpecGuardError

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
        self.memory: dict[tuple, object] = {}

    def model(self, role: str) -> Model:
        if role not in self._models:
            self._models[role] = Model(self.paths[role], n_gpu_layers=self.config.n_gpu_layers)
        return self._models[role]

    def session(self, role: str, n_seq: int = 1, layers: int = 0, hidden: bool = False) -> Session:
        """An empty session on a (cached) context of `role` with `n_seq` sequences; `layers` > 0 captures the
        attention of that many last layers, `hidden` the final hidden states (flash attention is then off)."""
        key = (role, n_seq, layers, hidden)
        if key not in self._contexts:
            model = self.model(role)
            hook = Capture(last_layers(model.n_layer, layers) if layers else [], hidden) if layers or hidden else None
            self._contexts[key] = Context(model, n_seq=n_seq, n_ctx_seq=self.config.n_ctx,
                                          n_threads=self.config.n_threads, hook=hook)
        ctx = self._contexts[key]
        ctx.clear()
        return Session(ctx)

    def prompt_tokens(self, question: str) -> list[int]:
        question = question.strip()
        if not question:
            raise SpecGuardError("the question is empty")
        model = self.model("draft")
        tokens = model.tokenize(model.chat_prompt([("system", SYSTEM_PROMPT), ("user", question)]))
        if len(tokens) >= self.config.n_ctx:
            raise SpecGuardError(f"the question is {len(tokens)} tokens with its prompt, more than the context of "
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
