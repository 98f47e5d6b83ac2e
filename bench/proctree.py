"""CPU seconds of a whole process tree over time (Linux ``/proc``), for contenders that fork helpers.

Ray starts a GCS server, a raylet and worker processes; ``RUSAGE_CHILDREN`` only
counts children that were waited for, so the bench samples ``/proc/PID/stat``
(utime + stime) of every descendant of the contender's root process instead. A
process's last sample is kept after it exits, so a helper that lives less than one
sampling interval is undercounted by at most that interval's CPU (this errs in the
contender's favour).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: str) -> tuple[int, float, int] | None:
    """(parent pid, CPU seconds, start tick) of one process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK, int(fields[19])


class TreeCPU:
    """Samples a tree's CPU every ``interval`` seconds in a thread; :meth:`at` reads it at any moment.

    Times are ``time.time()`` (wall clock) so that timestamps printed by the
    contender's own processes line up with the samples.
    """

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._seen: dict[tuple[int, int], float] = {}  # (pid, start tick) -> last CPU seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-treecpu", daemon=True)

    def start(self) -> TreeCPU:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                st = _stat(entry)
                if st is not None:
                    stats[int(entry)] = st
        tree = {self.root}
        grew = True
        while grew:
            grew = False
            for pid, (ppid, _, _) in stats.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    grew = True
        for pid in tree:
            if pid in stats:
                _, cpu, started = stats[pid]
                self._seen[(pid, started)] = cpu
        self.samples.append((time.time(), sum(self._seen.values())))

    def kill(self) -> None:
        """SIGKILL every process of the tree still alive (a contender that hangs)."""
        import signal

        self.sample()
        for pid, _ in list(self._seen):
            if pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    @property
    def total(self) -> float:
        return self.samples[-1][1] if self.samples else 0.0

    def at(self, t: float) -> float:
        """CPU seconds used by the tree up to wall-clock time ``t`` (linear between samples)."""
        s = self.samples
        if not s or t <= s[0][0]:
            return 0.0
        for (t0, c0), (t1, c1) in itertools.pairwise(s):
            if t <= t1:
                return c0 + (c1 - c0) * (t - t0) / max(t1 - t0, 1e-9)
        return s[-1][1]
