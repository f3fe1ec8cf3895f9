"""Peak resident memory of this process and every process it starts (Ray's workers included).

A simulation's memory lives in several processes; sampling the whole tree is how a
claim like "memory does not grow with the number of clients" is checked.
"""

from __future__ import annotations

import contextlib
import threading
from types import TracebackType

import psutil


class PeakTreeMemory:
    """``with PeakTreeMemory() as peak: ...`` then ``peak.bytes``: the largest sampled RSS sum."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.bytes = 0
        self._interval_s = interval_s
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakTreeMemory:
        self._sampler.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._done.set()
        self._sampler.join()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._done.wait(self._interval_s):
            total = 0
            for process in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a worker ended between listing and reading
                    total += process.memory_info().rss
            self.bytes = max(self.bytes, total)
