"""A hang watchdog: when a phase makes no progress for `timeout_s`, dump every thread's stack to the run
directory and name the phase (hangs at scale are otherwise reported with nothing to go on)."""

from __future__ import annotations

import faulthandler
import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


class Watchdog:
    def __init__(self, timeout_s: float, out_dir: Path, on_stall=None):
        self.timeout_s, self.out_dir, self.on_stall = timeout_s, Path(out_dir), on_stall
        self.phase = "startup"
        self._since = time.monotonic()
        self._fired_for: tuple[str, float] | None = None
        self._stop = threading.Event()
        self.dumps: list[Path] = []
        self._thread = None
        if timeout_s > 0:
            self._thread = threading.Thread(target=self._run, name="rltune-watchdog", daemon=True)
            self._thread.start()

    @contextmanager
    def watch(self, phase: str):
        prev, self.phase, self._since = self.phase, phase, time.monotonic()
        try:
            yield
        finally:
            self.phase, self._since = prev, time.monotonic()

    def beat(self) -> None:
        self._since = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout_s / 4)):
            stalled = time.monotonic() - self._since
            key = (self.phase, self._since)
            if stalled >= self.timeout_s and self._fired_for != key:
                self._fired_for = key
                self._dump(stalled)

    def _dump(self, stalled: float) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"stacks-{int(time.time())}-{self.phase.replace('/', '_')}.txt"
        with open(path, "w") as f:
            f.write(f"phase {self.phase!r} made no progress for {stalled:.0f}s; all thread stacks:\n")
            f.flush()
            faulthandler.dump_traceback(file=f, all_threads=True)
        self.dumps.append(path)
        msg = (f"watchdog: phase {self.phase!r} made no progress for {stalled:.0f}s "
               f"(run.watchdog_s={self.timeout_s:g}); stacks of all threads in {path}")
        log.error(msg)
        if self.on_stall is not None:
            self.on_stall(msg)

    def close(self) -> None:
        self._stop.set()
