"""Background threads that keep the network busy while blocks are read and written (standard
library only).

:class:`Prefetcher` produces the items of an iterator (blocks read from zarr and normalised) one
or more ahead in a thread; :class:`BackgroundWriter` runs write jobs (a block into the output
zarr, then its journal entry) in order in a thread. Reading, decompressing, compressing and
writing release the GIL, so they overlap the network's compute instead of following it.

Both keep the order of the work and bound the memory it holds: at most ``depth`` items wait in a
queue. An exception in a thread is raised in the consuming thread, as itself, at its next call
(never a hang: the thread always ends its queue with the item or the error). On a signal the
main thread raises :class:`mitoseg.signals.Interrupted` as before; the writer is then closed
(:meth:`BackgroundWriter.close`): the blocks computed so far (``depth`` + 1 at most) are written
and recorded, and a rerun resumes as after a stop without threads. A block is recorded in the
journal only after its data is written, so a process killed while it writes redoes that block.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

_END = object()
_POLL_S = 0.1  # how often a blocked producer looks whether its consumer has gone


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher:
    """Iterate over ``items`` with the next ``depth`` items produced in a background thread.

    Args:
        items: the iterator to run ahead of its consumer (consumed in the thread only).
        depth: items produced ahead at most; 0: no thread, each item produced when asked for
            (``wait_seconds`` is then the time spent producing).
        name: the thread's name.

    Attributes:
        wait_seconds: time the consumer spent waiting for an item not yet produced.
    """

    def __init__(self, items: Iterator[Any], depth: int = 1, name: str = "mitoseg-reader") -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        # items produced and not yet taken, the one being produced included: memory for
        # ``depth`` blocks besides the one computing
        self._slots = threading.Semaphore(max(1, int(depth)))
        self._stop = threading.Event()
        self._done = False
        self._items = items if depth <= 0 else None  # depth 0: produced when asked for
        self.wait_seconds = 0.0
        if self._items is None:
            threading.Thread(
                target=_produce,
                args=(items, self._queue, self._slots, self._stop),
                name=name,
                daemon=True,
            ).start()

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        start = time.perf_counter()
        if self._items is not None:
            try:
                return next(self._items)
            finally:
                self.wait_seconds += time.perf_counter() - start
        item = self._queue.get()
        self.wait_seconds += time.perf_counter() - start
        self._slots.release()
        if item is _END or isinstance(item, _Failed):
            self._done = True
            self._stop.set()
            if isinstance(item, _Failed):
                raise item.error
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop producing (the item being produced is finished, then dropped)."""
        self._done = True
        self._stop.set()

    def __del__(self) -> None:
        self._stop.set()


def _produce(
    items: Iterator[Any],
    out: queue.Queue[Any],
    slots: threading.Semaphore,
    stop: threading.Event,
) -> None:
    try:
        while True:
            while not slots.acquire(timeout=_POLL_S):
                if stop.is_set():  # the consumer has gone
                    return
            if stop.is_set():
                return
            item = next(items, _END)
            out.put(item)  # never waits: the slots bound the queue
            if item is _END:
                return
    except BaseException as error:  # raised in the consumer, whatever it is
        out.put(_Failed(error))


class BackgroundWriter:
    """Run jobs in submission order in one background thread, ``depth`` waiting at most.

    After a job fails, later jobs are dropped and the error is raised by the next
    :meth:`submit` or :meth:`flush`. ``depth=0``: no thread, :meth:`submit` runs the job.

    Attributes:
        wait_seconds: time :meth:`submit` and :meth:`flush` waited for the thread.
    """

    def __init__(self, depth: int = 1, name: str = "mitoseg-writer") -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, int(depth)))
        self._error: BaseException | None = None  # to raise (once)
        self._failed: BaseException | None = None  # no job runs after a failed one
        self._closed = threading.Event()
        self.wait_seconds = 0.0
        self._thread: threading.Thread | None = None  # depth 0: jobs run in submit()
        if depth > 0:
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is _END:
                    return
                if self._failed is None:
                    job()
            except BaseException as error:  # raised in the submitting thread
                self._failed = self._error = error
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._closed.set()
            raise error

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``; waits while ``depth`` jobs are waiting already."""
        self._raise()
        if self._closed.is_set():
            raise RuntimeError("the writer is closed")
        start = time.perf_counter()
        try:
            if self._thread is None:
                job()
            else:
                self._queue.put(job)
        finally:
            self.wait_seconds += time.perf_counter() - start

    def flush(self) -> None:
        """Wait until every queued job has run; raise the error of a failed one."""
        start = time.perf_counter()
        self._queue.join()
        self.wait_seconds += time.perf_counter() - start
        self._raise()

    def close(self, timeout: float | None = None) -> None:
        """Run the queued jobs (``depth`` at most; none after a failed one) and end the thread,
        waiting ``timeout`` s at most. Errors are not raised: this is also the path out of
        another error or a signal, where the computed blocks are still worth keeping."""
        self._closed.set()
        if self._thread is None or not self._thread.is_alive():
            return
        try:
            self._queue.put(_END, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the block writer is still writing after %s s; leaving it", timeout)
