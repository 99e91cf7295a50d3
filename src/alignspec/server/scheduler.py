"""The scheduler owns the model: requests wait in a bounded queue and run one at a time.

The HTTP layer only knows :class:`Scheduler` (``submit`` a :class:`GenerationRequest`, get a
:class:`Job` to read deltas and the final output from, ``cancel`` it) and the two queue
figures. :class:`SerialScheduler` is today's engine: one KV cache, so one generation at a time,
stepped round by round in one worker thread so the event loop stays free and a cancelled job
stops at the next round. A batched engine (several requests per forward) can implement the
same interface and replace it without any change to :mod:`alignspec.server.app`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from alignspec.api import LLM, GenerationOutput
from alignspec.errors import AlignspecError

log = logging.getLogger("alignspec.server")


@dataclass
class GenerationRequest:
    """One generation, independent of HTTP: the arguments of :meth:`LLM.stream`."""

    method: str
    max_new_tokens: int
    prompt: Any = None  # text or chat messages
    prompt_ids: list[int] | None = None
    raw: bool = False
    truncate: str = "none"
    stop: list[str] = field(default_factory=list)
    sampling: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def stream_kwargs(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "max_new_tokens": self.max_new_tokens,
            "prompt_ids": self.prompt_ids,
            "raw": self.raw,
            "truncate": self.truncate,
            "stop": self.stop,
            **self.sampling,
            **self.options,
        }


class QueueFull(Exception):
    """Too many requests are waiting; the client should retry after ``retry_after`` seconds."""

    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(f"the server is busy ({waiting} requests waiting); retry later")
        self.retry_after = retry_after


class JobCancelled(Exception):
    """The job was cancelled (its client went away) before it finished."""


_END = object()


class Job:
    """A submitted request: ``started()``, then ``deltas()``, then ``output``."""

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self.submitted = time.perf_counter()
        self.first_delta_at: float | None = None
        self.finished_at: float | None = None
        self.output: GenerationOutput | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def cancel(self) -> None:
        """Stop the generation at its next round (or drop it if still waiting); idempotent."""
        self.cancelled = True

    async def started(self) -> None:
        """Wait until the generation runs; raises what refused it (e.g. an oversized prompt)."""
        await self._started

    async def deltas(self) -> AsyncIterator[str]:
        """Text deltas as rounds commit them; raises if the generation failed midway."""
        while True:
            item = await self._events.get()
            if item is _END:
                break
            yield item
        if self.error is not None:
            raise self.error

    # the scheduler's side -----------------------------------------------------------
    def _begin(self, error: BaseException | None = None) -> None:
        if self._started.done():
            return
        if error is None:
            self._started.set_result(None)
        else:
            self.error = error
            self._started.set_exception(error)
            self._started.exception()  # retrieved: an unawaited failure is not "never retrieved"

    def _push(self, delta: str) -> None:
        if self.first_delta_at is None:
            self.first_delta_at = time.perf_counter()
        self._events.put_nowait(delta)

    def _end(self, output: GenerationOutput | None, error: BaseException | None = None) -> None:
        self.finished_at = time.perf_counter()
        self.output = output
        self.error = self.error or error
        self._begin(error)
        self._events.put_nowait(_END)


class Scheduler(Protocol):
    """What the HTTP layer needs from an engine."""

    waiting: int
    running: int

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def submit(self, request: GenerationRequest) -> Job: ...


class SerialScheduler:
    """One generation at a time on one :class:`LLM`, with at most ``max_queue`` waiting."""

    def __init__(
        self,
        llm: LLM,
        max_queue: int,
        on_done: Callable[[Job], None] = lambda job: None,
    ) -> None:
        self.llm = llm
        self.max_queue = max_queue
        self.on_done = on_done
        self.waiting = 0
        self.running = 0
        self._queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alignspec-gen")
        self._recent_wall = 1.0  # seconds of the last generation, for Retry-After

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._serve(), name="alignspec-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._thread.shutdown(wait=False, cancel_futures=True)

    def submit(self, request: GenerationRequest) -> Job:
        """Queue a request, or raise :class:`QueueFull` when ``max_queue`` are waiting."""
        assert self._queue is not None, "start() the scheduler first"
        if self.waiting >= self.max_queue:
            retry = max(1, round(self._recent_wall * (self.waiting + 1)))
            raise QueueFull(self.waiting, retry)
        job = Job(request)
        self.waiting += 1
        self._queue.put_nowait(job)
        return job

    async def _serve(self) -> None:
        assert self._queue is not None
        while True:
            job = await self._queue.get()
            self.waiting -= 1
            if job.cancelled:
                job._end(None, JobCancelled())
            else:
                self.running += 1
                try:
                    await self._run(job)
                except Exception as exc:  # keep serving whatever one request did
                    log.exception("generation failed")
                    job._end(None, exc)
                finally:
                    self.running -= 1
            try:
                self.on_done(job)
            except Exception:
                log.exception("recording a finished request failed")

    async def _run(self, job: Job) -> None:
        loop = asyncio.get_running_loop()

        def call(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
            return loop.run_in_executor(self._thread, fn, *args)

        kwargs = job.request.stream_kwargs()
        try:
            gen = await call(lambda: self.llm.stream(job.request.prompt, **kwargs))
        except AlignspecError as exc:  # the request's fault: a 400, not a crash
            job._end(None, exc)
            return
        except Exception as exc:
            log.exception("generation could not start")
            job._end(None, exc)
            return
        job._begin()
        steps = iter(gen)
        try:
            while not job.cancelled:
                delta = await call(next, steps, _END)
                if delta is _END:
                    break
                job._push(delta)
        except Exception as exc:
            log.exception("generation failed")
            job._end(None, exc)
            return
        finally:
            if gen.output is None:  # cancelled (or failed): free the KV cache now
                await call(steps.close)
        if gen.output is not None:
            self._recent_wall = gen.output.stats.wall_time
        job._end(gen.output, None if gen.output else JobCancelled())
