"""The OpenAI chat-completions protocol: what a request may say, and the objects a response is made of.

A request is checked completely before any decoding: a bad one is a 400 with an OpenAI-style error object. `model`
names the method (`specguard`, `target`, `draft`, `sd`, …) on the loaded pair; the method's own options (k, tau,
verifier, …) come as extra body fields (the openai client's `extra_body`). Responses carry the standard fields and
one extension object, `specguard`: per step its verdict, source model and scores (in the stream chunk that ends the
step), and the run's stats in the last chunk (or the whole response).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace

from ..decoders import METHODS
from ..decoders.options import KIND_NAMES, SCHEMA, Options, typed
from ..errors import OptionError
from ..events import Step
from ..tutor.check import MAX_STEPS, split_steps
from ..tutor.reference import answer_value

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class RequestError(Exception):
    """An error answered with an OpenAI-style error object."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    method: str
    messages: list[tuple[str, str]]
    options: Options
    stream: bool = False
    include_usage: bool = False
    stop: list[str] = field(default_factory=list)

    @property
    def question(self) -> str:
        """The last user message (what `solve` would call the question)."""
        return next((content for role, content in reversed(self.messages) if role == "user"), "")


def _typed(body: dict, name: str, kind: type, check=lambda v: True, rule: str = ""):
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok or not check(value):
        raise RequestError(400, f"'{name}' must be {rule or KIND_NAMES[kind]}, not {value!r}", param=name)
    return value


def _option(body: dict, name: str, key: str | None = None):
    """A method option from the body (None when absent), checked by the one schema."""
    value = body.get(key or name)
    if value is None:
        return None
    try:
        return typed(name, value)
    except OptionError as exc:
        raise RequestError(400, str(exc), param=key or name) from None


def _content(message: dict, i: int) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text ones
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise RequestError(400, f"messages[{i}].content: only text parts are supported", param="messages")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise RequestError(400, f"messages[{i}].content must be a string", param="messages")
    return content


def parse_request(body, max_k: int, defaults: Options = Options()) -> ChatRequest:
    """Check a chat-completions body and turn it into a method, the messages and the decoder's options (the
    server's `defaults` where the request says nothing)."""
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    method = body.get("model")
    if not isinstance(method, str) or method not in METHODS:
        raise RequestError(400, f"unknown model {method!r}; this server runs {', '.join(METHODS)} "
                                f"(GET /v1/models)", param="model", code="model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list of {role, content}", param="messages")
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or message["role"] not in ROLES:
            raise RequestError(400, f"messages[{i}] needs a role among {', '.join(ROLES)}", param="messages")
        parsed.append((ROLES[message["role"]], _content(message, i)))
    if not any(role == "user" and content.strip() for role, content in parsed):
        raise RequestError(400, "the messages hold no user message with text", param="messages")
    _typed(body, "n", int, lambda v: v == 1, "1 (one choice per request)")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(400, "'stop' must be a string or a list of up to 4 non-empty strings", param="stop")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise RequestError(400, "'stream_options' must be an object", param="stream_options")
    # every option a request may set (decoders.options.SCHEMA: the same types, rules and messages as the CLI)
    options = {name: _option(body, name) for name, spec in SCHEMA.items() if spec.request}
    if body.get("max_completion_tokens") is not None:  # the newer name of max_tokens
        options["max_tokens"] = _option(body, "max_tokens", "max_completion_tokens")
    if options["k"] is not None and not options["k"] <= max_k:
        raise RequestError(400, f"'k' must lie between 1 and {max_k} (the server's --max-k)", param="k")
    return ChatRequest(method=method, messages=parsed,
                       options=replace(defaults, **{k: v for k, v in options.items() if v is not None}),
                       stream=bool(_typed(body, "stream", bool)), stop=stop,
                       include_usage=bool(_typed(stream_options, "include_usage", bool)))


def parse_check(body) -> tuple[str, list[str], str | None]:
    """A `/v1/check` body: the question, the student's steps (a list, or one `solution` text split at blank
    lines) and the optional answer key (`answer`: one number, as a number or a string)."""
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    question = body.get("question")
    if not isinstance(question, str) or not question.strip():
        raise RequestError(400, "'question' must be a non-empty string", param="question")
    steps = body.get("steps")
    if steps is None and isinstance(body.get("solution"), str):
        steps = split_steps(body["solution"])
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) and s.strip() for s in steps):
        raise RequestError(400, "'steps' must be a non-empty list of non-empty strings (or give 'solution' as one "
                                "text, a step per paragraph)", param="steps")
    if len(steps) > MAX_STEPS:
        raise RequestError(400, f"at most {MAX_STEPS} steps are checked at once", param="steps")
    key = body.get("answer")
    if key is not None and (isinstance(key, bool) or not isinstance(key, (str, int, float))
                            or answer_value(str(key)) is None):
        raise RequestError(400, "'answer' must be one number (e.g. 72, \"2.5\", \"3/4\", \"25%\")", param="answer")
    return question.strip(), [s.strip() for s in steps], None if key is None else str(key)


class StopText:
    """The generated text as it may be sent: cut before the first stop string, holding back any tail that could
    still turn into one."""

    def __init__(self, stops: list[str]):
        self.stops, self.text, self.sent, self.hit = stops, "", 0, False
        self.hold = max((len(s) - 1 for s in stops), default=0)

    def push(self, piece: str) -> str:
        """Add generated text; return what can be sent now."""
        self.text += piece
        cuts = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.hit, self.text = True, self.text[:min(cuts)]
            return self.flush()
        return self._send(max(len(self.text) - self.hold, self.sent))

    def flush(self) -> str:
        return self._send(len(self.text))

    def _send(self, end: int) -> str:
        out, self.sent = self.text[self.sent:end], end
        return out


def step_view(step: Step) -> dict:
    """What a client learns of one step: who wrote it and why."""
    view = {"index": step.index, "text": step.text, "tokens": len(step.tokens), "source": step.source,
            "verdict": step.verdict, "stop": step.stop, "drafted": step.drafted, "accepted": step.accepted,
            "target_tokens": step.target_tokens, "scores": step.scores, "timings": step.timings}
    if step.control:
        view["control"] = step.control
    return view


def finish_reason(steps: list[Step], stopped: bool) -> str:
    """"stop" at a stop string or the end of generation, "length" when the budget or the context ran out."""
    return "stop" if stopped or (steps and steps[-1].stop == "eos") else "length"


def usage(n_prompt: int, steps: list[Step]) -> dict:
    n_completion = sum(len(s.tokens) for s in steps)
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion}


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion(cid: str, model: str, text: str, reason: str, usage_: dict, extension: dict) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": reason}],
            "usage": usage_, "specguard": extension}


def chunk(cid: str, model: str, delta: dict, reason: str | None = None, extension: dict | None = None) -> dict:
    out = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}
    if extension is not None:
        out["specguard"] = extension
    return out
