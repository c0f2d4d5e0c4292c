"""A small priority worker pool: the highest-priority model's work runs first, and tasks
may add tasks. Threads, because boto3 is synchronous and the heavy parts (socket reads,
hashing, pwrite) release the GIL."""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable


class WorkerPool:
    def __init__(self, workers: int, name: str = "models"):
        self._queue: queue.PriorityQueue[tuple[tuple[int, ...], int, Callable[[], None]]] = (
            queue.PriorityQueue())
        self._seq = itertools.count()
        self._pending = 0
        self._idle = threading.Condition()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, priority: tuple[int, ...], task: Callable[[], None]) -> None:
        """Lower tuples run first."""
        with self._idle:
            self._pending += 1
        self._queue.put((priority, next(self._seq), task))

    def _work(self) -> None:
        while True:
            _prio, _seq, task = self._queue.get()
            if task is _STOP:
                return
            try:
                task()
            finally:
                with self._idle:
                    self._pending -= 1
                    if self._pending == 0:
                        self._idle.notify_all()

    def wait(self) -> None:
        """Until every task (and every task they added) has run."""
        with self._idle:
            while self._pending:
                self._idle.wait()

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(((1 << 62,), next(self._seq), _STOP))
        for t in self._threads:
            t.join(timeout=10)


def _STOP() -> None:  # sentinel task
    """Tells a worker to exit."""
