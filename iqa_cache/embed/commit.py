"""Committing embedded batches to the cache from a background thread, beside
the cache writer (:class:`iqa_cache.cache.CacheWriter`): both stage-one
pipelines hand their batches to an :class:`AsyncCommitter`."""
from __future__ import annotations

import queue
import threading
from typing import Callable

import numpy as np


class AsyncCommitter:
    """Commits batches to a :class:`~iqa_cache.cache.CacheWriter` from one
    background thread, in the order given, so that HDF5 writes and syncs
    overlap the encoder.  ``put`` blocks when ``depth`` batches are waiting;
    an error in the thread is raised by the next ``put`` or by ``close``."""

    def __init__(self, writer, *, depth: int = 2, on_commit: Callable[[int], None] | None = None):
        self.writer = writer
        self.on_commit = on_commit
        self.q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.error: BaseException | None = None
        self.n_committed = 0
        self.thread = threading.Thread(target=self._run, name="iqa-commit", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is not None:
                continue
            try:
                self.writer.commit(*item)
                self.n_committed += len(item[2])
                if self.on_commit is not None:
                    self.on_commit(len(item[2]))
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                self.error = e

    def put(self, start: int | np.ndarray, emb: np.ndarray, status: np.ndarray, reasons: list[str]) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((start, emb, status, reasons))

    def close(self) -> None:
        """Commit what is queued, stop the thread, raise its error if any."""
        if self.thread.is_alive():
            self.q.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error
