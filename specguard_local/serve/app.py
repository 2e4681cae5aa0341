"""`specguard-local serve`: the loaded pair behind an OpenAI-compatible HTTP API (Starlette on uvicorn).

Routes: POST /v1/chat/completions (streamed as server-sent events, or not), POST /v1/check (a student's own steps
checked one by one, `tutor.check`), GET /v1/models (one entry per method), GET /health, and the tutor page at
GET / (`static/`: one page, its script and style, and a vendored, pinned KaTeX; it asks this server only). Both POST
routes share the API key, the slots and the queue. A request waits for its first step before the response starts, so every error found before decoding
(bad option values, a prompt longer than the context, …) is a 400 with an OpenAI-style error object; an error after
that ends the stream with an error event. A client that disconnects stops its request at the next decode; SIGINT or
SIGTERM stops admitting, ends the running requests (503 or a final error event) and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import api
from ..decoders import METHODS
from ..decoders.options import Options
from ..errors import SpecGuardError
from ..runtime import Runtime
from ..verify.signals import pair_profile
from ..tutor.check import check_solution
from . import chat
from .chat import RequestError
from .jobs import Job, Scheduler

DISCONNECT_POLL_S = 0.25
STATIC = Path(__file__).parent / "static"


def create_app(rt: Runtime, parallel: int = 1, queue: int = 16, max_k: int = 1, api_key: str | None = None,
               defaults: Options = Options(), deterministic: bool = False) -> Starlette:
    """The app on a loaded pair: `parallel` requests decode together, `queue` more may wait; requests may ask for
    up to `max_k` candidates per step; `defaults` are the options a request does not set; `deterministic`: no
    request's decodes are merged with another's, so each answer is the one it gets alone (`batching`)."""
    scheduler = Scheduler(rt, parallel, queue, max_k, merge=not deterministic)

    def error(exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    def authorize(request: Request) -> None:
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            raise RequestError(401, "a valid API key is required (Authorization: Bearer KEY)",
                               code="invalid_api_key")

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "shutting down" if scheduler.closing else "ok", "slots": parallel,
                             "running": len(scheduler.running), "waiting": scheduler.waiting,
                             "deterministic": deterministic,
                             "draft": rt.ids["draft"], "target": rt.ids["target"]})

    async def models(request: Request) -> JSONResponse:
        authorize(request)
        return JSONResponse({"object": "list", "data": [
            {"id": method, "object": "model", "created": 0, "owned_by": "specguard-local",
             "specguard": {"draft": rt.ids["draft"], "target": rt.ids["target"]}} for method in METHODS]})

    async def json_body(request: Request):
        authorize(request)
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(400, "the body is not valid JSON")

    async def check(request: Request) -> JSONResponse:
        question, steps, key = chat.parse_check(await json_body(request))
        try:
            rt.prompt_tokens(question)   # a question too long for the context is the client's error
            profile = pair_profile(defaults.profile, rt.ids["draft"], rt.ids["target"])
        except SpecGuardError as exc:
            raise RequestError(400, str(exc))
        job = Job(lambda slot_rt: [check_solution(slot_rt, question, steps, profile, key)])
        await scheduler.start(job)
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        raise RequestError(499, "the client closed the request")
                    continue
                if kind == "step":
                    return JSONResponse({"object": "check", **value.to_dict()})
                if kind == "error":
                    raise value
                raise RequestError(503, "the server is shutting down; the check was stopped", "server_error",
                                   code="shutting_down")
        finally:
            job.stop.set()

    async def completions(request: Request):
        req = chat.parse_request(await json_body(request), max_k, defaults)
        try:
            prompt = rt.chat_tokens(req.messages)
            api.check(req.method, req.options)
        except SpecGuardError as exc:  # an option's OptionError names it
            raise RequestError(400, str(exc), param=getattr(exc, "param", None))
        job = Job(lambda slot_rt: api.generate(slot_rt, prompt, req.method, req.options))
        await scheduler.start(job)
        run = Run(job, req, prompt, request, scheduler)
        try:
            first = await run.next_event()
        except BaseException:
            job.stop.set()
            raise
        if first[0] == "error":
            raise first[1]
        if first[0] == "cancelled":
            raise run.cancelled_error()
        if req.stream:
            return EventSourceResponse(run.chunks(first), ping=15, sep="\n", shutdown_grace_period=5)
        return JSONResponse(await run.whole(first))

    async def on_request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error(exc)

    async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(RequestError(exc.status_code, exc.detail, "invalid_request_error"))

    @asynccontextmanager
    async def lifespan(app):
        yield
        scheduler.close()
        if await asyncio.to_thread(scheduler.join, 30.0):
            rt.close()

    async def page(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app = Starlette(routes=[Route("/", page), Mount("/static", StaticFiles(directory=STATIC), name="static"),
                            Route("/health", health), Route("/v1/models", models),
                            Route("/v1/chat/completions", completions, methods=["POST"]),
                            Route("/v1/check", check, methods=["POST"])],
                    exception_handlers={RequestError: on_request_error, HTTPException: on_http_error},
                    lifespan=lifespan)
    app.state.scheduler = scheduler
    return app


class Run:
    """One admitted request as the handler sees it: its steps as they come, cut at stop strings."""

    def __init__(self, job: Job, req: chat.ChatRequest, prompt: list[int], request: Request, scheduler: Scheduler):
        self.job, self.req, self.prompt, self.request, self.scheduler = job, req, prompt, request, scheduler
        self.id, self.start, self.steps = chat.new_id(), time.perf_counter(), []
        self.text = chat.StopText(req.stop)

    async def next_event(self, watch: bool = True) -> tuple:
        """The worker's next event. While `watch`ing, a client gone meanwhile stops the request (once a stream has
        started, sse-starlette watches instead and cancels the stream, which stops the request too)."""
        while watch:
            try:
                return await asyncio.wait_for(self.job.events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await self.request.is_disconnected():
                    self.job.stop.set()
                    raise RequestError(499, "the client closed the request")
        return await self.job.events.get()

    def cancelled_error(self) -> RequestError:
        return RequestError(503, "the server is shutting down; the request was stopped", "server_error",
                            code="shutting_down")

    def take(self, step) -> str:
        """Record a step; return its text as it may be sent (stopping the request at a stop string)."""
        self.steps.append(step)
        piece = self.text.push(step.text)
        if self.text.hit:
            self.job.stop.set()
        return piece

    def extension(self) -> dict:
        result = api.summarize(self.req.method, self.req.question, self.steps, time.perf_counter() - self.start)
        return {"method": self.req.method, "stats": result.stats}

    def finish_reason(self) -> str:
        return chat.finish_reason(self.steps, self.text.hit)

    async def whole(self, event: tuple) -> dict:
        try:
            while True:
                kind, value = event
                if kind == "error":
                    raise value
                if kind == "cancelled" and not self.text.hit:
                    raise self.cancelled_error()
                if kind == "step" and not self.text.hit:
                    self.take(value)
                if kind in ("end", "cancelled"):
                    break
                event = await self.next_event()
        finally:
            self.job.stop.set()
        text = self.text.text
        extension = {**self.extension(), "steps": [chat.step_view(s) for s in self.steps]}
        return chat.completion(self.id, self.req.method, text, self.finish_reason(),
                               chat.usage(len(self.prompt), self.steps), extension)

    async def chunks(self, event: tuple):
        """Server-sent events as OpenAI sends them: a role chunk, one chunk per step (its text and its verdict),
        a last chunk with the finish reason and the run's stats, the usage chunk if asked, then [DONE]."""
        model = self.req.method
        try:
            yield json.dumps(chat.chunk(self.id, model, {"role": "assistant", "content": ""}))
            while True:
                kind, value = event
                if kind == "error" or (kind == "cancelled" and not self.text.hit):
                    failure = value if kind == "error" else self.cancelled_error()
                    yield json.dumps(failure.body())
                    break
                if kind == "step" and not self.text.hit:
                    piece = self.take(value)
                    yield json.dumps(chat.chunk(self.id, model, {"content": piece},
                                                extension={"step": chat.step_view(value)}))
                if kind in ("end", "cancelled") or (kind == "step" and self.text.hit):
                    rest = self.text.flush()
                    yield json.dumps(chat.chunk(self.id, model, {"content": rest} if rest else {},
                                                self.finish_reason(), self.extension()))
                    if self.req.include_usage:
                        yield json.dumps({**chat.chunk(self.id, model, {}), "choices": [],
                                          "usage": chat.usage(len(self.prompt), self.steps)})
                    break
                event = await self.next_event(watch=False)
            yield "[DONE]"
        finally:
            self.job.stop.set()


class _Server(uvicorn.Server):
    """uvicorn's server, but SIGINT/SIGTERM also stop the running requests, and a clean shutdown exits 0 instead of
    re-raising the signal."""

    def __init__(self, config: uvicorn.Config, scheduler: Scheduler):
        super().__init__(config)
        self.scheduler = scheduler

    def handle_exit(self, sig, frame) -> None:
        self.scheduler.close()
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def serve(rt: Runtime, host: str, port: int, parallel: int, queue: int, max_k: int, api_key: str | None,
          defaults: Options, deterministic: bool = False) -> None:
    """Serve until SIGINT / SIGTERM."""
    app = create_app(rt, parallel, queue, max_k, api_key, defaults, deterministic)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=10)
    _Server(config, app.state.scheduler).run()
