"""Progress display for long verification runs.

On a terminal: one self-overwriting line with a bar, pass/fail/skip counts and an ETA.
Elsewhere (CI logs, pipes): a plain line every ``interval_s`` seconds and at the end, so a log
shows the run is alive without drowning in carriage returns.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

__all__ = ["Progress", "format_duration"]

_BAR_WIDTH = 24  # characters of the bar; fits an 80-column terminal with the counts beside it


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``."""
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class Progress:
    """Counts finished cases by outcome and shows them.

    ``update(outcome)`` is called once per finished case with "passed", "failed", "skipped" or
    "error"; ``close()`` prints the final line. ``stream=None`` means stderr, so stdout stays
    clean for the summary.
    """

    total: int
    label: str = "cases"
    stream: TextIO | None = None
    interval_s: float = 10.0  # plain mode: seconds between lines (a CI log stays readable)
    is_tty: bool | None = None  # None: ask the stream
    clock: Callable[[], float] = time.monotonic  # injectable for tests
    counts: dict[str, int] = field(default_factory=dict)
    done: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.total, int) or self.total < 0:
            raise ValueError(f"total: expected an int >= 0, got {self.total!r}")
        if self.stream is None:
            self.stream = sys.stderr
        if self.is_tty is None:
            isatty = getattr(self.stream, "isatty", None)
            self.is_tty = bool(isatty and isatty())
        self._start = self.clock()
        self._last_line = self._start
        self._closed = False

    def update(self, outcome: str, n: int = 1) -> None:
        self.done += n
        self.counts[outcome] = self.counts.get(outcome, 0) + n
        now = self.clock()
        if self.is_tty:
            self._write_tty(now)
        elif now - self._last_line >= self.interval_s:
            self._last_line = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        now = self.clock()
        if self.is_tty:
            self._write_tty(now)
            self.stream.write("\n")
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds left, extrapolated from the mean time per finished case; None before the first."""
        now = self.clock() if now is None else now
        if self.done == 0:
            return None
        per_case = (now - self._start) / self.done
        return per_case * max(0, self.total - self.done)

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        counts = " ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        eta = self.eta_s(now)
        eta_txt = "--:--" if eta is None else format_duration(eta)
        elapsed = format_duration(now - self._start)
        text = f"{self.done}/{self.total} {self.label}"
        if counts:
            text += f" ({counts})"
        return f"{text} elapsed {elapsed} ETA {eta_txt}"

    def _write_tty(self, now: float) -> None:
        frac = 1.0 if self.total == 0 else min(1.0, self.done / self.total)
        filled = int(round(frac * _BAR_WIDTH))
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        self.stream.write(f"\r[{bar}] {self.line(now)}\x1b[K")
        self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
