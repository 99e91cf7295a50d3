"""The FastAPI app: OpenAI routes over a :class:`~alignspec.server.scheduler.Scheduler`.

Routes only translate (:func:`~alignspec.server.plan.plan`), submit, and shape the output
(:mod:`~alignspec.server.responses`); the model is touched only by the scheduler. A streamed
request waits until its generation has started before answering 200, so a prompt refused at
start (too long for the context) still gets a 400 rather than a broken stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, format_sse_event
from starlette.types import Receive, Scope, Send

from alignspec.api import LLM
from alignspec.errors import AlignspecError
from alignspec.server import errors
from alignspec.server.errors import APIError, error_body
from alignspec.server.metrics import ServerMetrics
from alignspec.server.plan import ServeConfig, plan
from alignspec.server.responses import Shape
from alignspec.server.scheduler import Job, JobCancelled, QueueFull, Scheduler, SerialScheduler
from alignspec.server.schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("alignspec.server")


class JobStream(EventSourceResponse):
    """An SSE response that cancels its job however it ends (finished, failed, disconnect)."""

    def __init__(self, job: Job, content: AsyncIterator[bytes]) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache"})
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()  # no-op when it finished; stops it at the next round otherwise


def _event(payload: dict[str, Any]) -> bytes:
    return format_sse_event(data_str=json.dumps(payload, ensure_ascii=False))


async def _sse(job: Job, shape: Shape, include_usage: bool) -> AsyncIterator[bytes]:
    if shape.chat:
        yield _event(shape.chunk("", first=True))  # OpenAI's first chunk carries the role
    try:
        async for delta in job.deltas():
            yield _event(shape.chunk(delta))
    except Exception:  # already logged by the scheduler; the client gets an error event
        yield _event(error_body(500, "the generation failed"))
        yield b"data: [DONE]\n\n"
        return
    out = job.output
    if out is not None:
        yield _event(shape.final_chunk(out))
        if include_usage:
            yield _event(shape.usage_chunk(out))
    yield b"data: [DONE]\n\n"


async def _complete(request: Request, body: ChatCompletionRequest | CompletionRequest) -> Response:
    state = request.app.state
    planned = plan(body, state.config)
    try:
        job = state.scheduler.submit(planned)
    except QueueFull as exc:
        raise APIError(
            503, str(exc), code="queue_full", headers={"Retry-After": str(exc.retry_after)}
        ) from None
    watch = asyncio.create_task(_cancel_if_gone(request, job))
    try:
        try:
            await job.started()
        except AlignspecError as exc:
            message = str(exc).replace("--truncate middle", '"alignspec": {"truncate": "middle"}')
            param = "messages" if body_is_chat(body) else "prompt"
            raise APIError(400, message, param=param) from None
        except JobCancelled:
            return Response(status_code=499)  # nobody is listening any more
        shape = Shape(chat=body_is_chat(body), model=state.config.model_name)
        if body.stream:
            watch.cancel()  # the stream response listens for the disconnect itself
            await asyncio.gather(watch, return_exceptions=True)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return JobStream(job, _sse(job, shape, include_usage))
        try:
            async for _ in job.deltas():
                pass
        except JobCancelled:
            return Response(status_code=499)
        assert job.output is not None
        return JSONResponse(shape.completion(job.output))
    finally:
        watch.cancel()


async def _cancel_if_gone(request: Request, job: Job) -> None:
    """Cancel a job whose client disconnects before its answer starts streaming."""
    while not job.finished:
        if await request.is_disconnected():
            job.cancel()
            return
        await asyncio.sleep(0.25)


def body_is_chat(body: ChatCompletionRequest | CompletionRequest) -> bool:
    return isinstance(body, ChatCompletionRequest)


def create_app(llm: LLM, config: ServeConfig, *, max_queue: int = 64) -> FastAPI:
    """The server app for one loaded model."""
    serial = SerialScheduler(llm, max_queue)
    metrics = ServerMetrics(lambda: serial.waiting, lambda: serial.running)
    serial.on_done = metrics.observe
    scheduler: Scheduler = serial  # the routes below know only the Scheduler interface

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await scheduler.start()
        try:
            yield
        finally:
            await scheduler.stop()

    app = FastAPI(title="alignspec", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.config = config
    app.state.scheduler = scheduler
    app.state.metrics = metrics
    app.state.started = int(time.time())
    errors.install(app)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await _complete(request, body)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await _complete(request, body)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {
            "id": config.model_name,
            "object": "model",
            "created": app.state.started,
            "owned_by": "alignspec",
        }
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "waiting": scheduler.waiting, "running": scheduler.running}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    return app
