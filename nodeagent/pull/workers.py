"""Unpack layers in worker processes.

Parsing a tar is Python code holding the GIL; in threads it would stall the event loop
that drives the downloads and slow the other layers' decompression (measured: a busy
Python thread doubles an ISA-L thread's time). Processes give each layer its own
interpreter. Workers are plain ``python -m nodeagent.pull.workerproc`` children (not
forked: grpcio's threads do not survive a fork; not multiprocessing's spawn, which
re-imports the caller's main script) that take pickled jobs on stdin and answer on
stdout, die with the agent (PR_SET_PDEATHSIG), and report progress through a small shared
file the agent polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import pickle
import struct
import sys

from nodeagent.pull.unpack import UnpackError, UnpackJob, UnpackResult
from nodeagent.pull.watermark import shared_map
from nodeagent.pull.workerproc import FRAME, PROGRESS

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class UnpackProgress:
    """Parent side of a job's progress file: read counters, ask the worker to stop."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._map = shared_map(path, PROGRESS.size, create=True)

    def read(self) -> tuple[int, int]:
        compressed, uncompressed, _ = PROGRESS.unpack_from(self._map, 0)
        return compressed, uncompressed

    def cancel(self) -> None:
        struct.pack_into("<q", self._map, 16, 1)

    def close(self) -> None:
        self._map.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def run(self, job: UnpackJob, progress_path: str) -> UnpackResult:
        assert self.process.stdin is not None and self.process.stdout is not None
        payload = pickle.dumps((job, progress_path))
        self.process.stdin.write(FRAME.pack(len(payload)) + payload)
        await self.process.stdin.drain()
        header = await self.process.stdout.readexactly(FRAME.size)
        answer = pickle.loads(await self.process.stdout.readexactly(FRAME.unpack(header)[0]))
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()


class _Slots:
    """At most ``size`` holders; waiters are served biggest job first (the longest
    unpack starts first, so it doesn't end last: it sets the pull's wall time). Grants
    happen on the next loop iteration, so layers queued together are compared."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = 0
        self._scheduled = False

    @contextlib.asynccontextmanager
    async def hold(self, weight: int):  # type: ignore[no-untyped-def]
        future = asyncio.get_running_loop().create_future()
        self._order += 1
        heapq.heappush(self._waiting, (-weight, self._order, future))
        self._schedule()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # granted just as we were cancelled
            raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        self.free += 1
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._grant)

    def _grant(self) -> None:
        self._scheduled = False
        while self._waiting and self.free > 0:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():  # (a cancelled waiter is skipped)
                self.free -= 1
                future.set_result(None)


class UnpackPool:
    """At most ``size`` layers unpacking at once, each in a worker process (started on
    first use, reused after); the biggest waiting layer goes first."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._slots = _Slots(self.size)

    async def unpack(self, job: UnpackJob, progress: UnpackProgress) -> UnpackResult:
        async with self._slots.hold(job.size):
            worker = self._idle.pop() if self._idle else await self._start()
            running = asyncio.ensure_future(worker.run(job, progress.path))
            try:
                result = await asyncio.shield(running)
            except asyncio.CancelledError:
                progress.cancel()  # the worker stops at its next piece; not reused
                self._retire(worker)
                # Killed mid-job, it ends with a broken pipe nobody waits for: take it.
                running.add_done_callback(lambda task: task.cancelled() or task.exception())
                raise
            except (asyncio.IncompleteReadError, BrokenPipeError, ConnectionResetError):
                self._retire(worker)
                raise UnpackError(f"layer {job.digest}: the unpack worker died") from None
            except BaseException:
                self._idle.append(worker)  # the job failed, the worker is fine
                raise
            self._idle.append(worker)
            return result

    async def _start(self) -> _Worker:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH", "")) if p)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nodeagent.pull.workerproc", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env=env)
        worker = _Worker(process)
        self._all.add(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        worker.kill()
        self._all.discard(worker)

    async def close(self) -> None:
        for worker in list(self._all):
            worker.kill()
            with contextlib.suppress(Exception):
                await worker.process.wait()
        self._all.clear()
        self._idle.clear()
