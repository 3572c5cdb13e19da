"""Progress for long work: a bar on a terminal, one line every ``interval`` seconds elsewhere.

tqdm turns itself off when stderr is not a terminal, so a CI log showed nothing for minutes
(DP-SGD, CDA fine-tuning). :func:`progress` keeps tqdm's bar on a terminal and otherwise prints
periodic one-line reports, so a log always says that work goes on and how far it is.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

__all__ = ["LineProgress", "progress"]

#: Seconds between two progress lines when stderr is not a terminal.
DEFAULT_INTERVAL = 30.0


class LineProgress:
    """The part of tqdm's interface the tool uses (``update``, ``set_postfix``, ``close``, context
    manager), printing ``desc: done/total unit (pct), elapsed`` at most every ``interval`` seconds,
    and a last line at the end when it printed any (short work stays silent)."""

    def __init__(self, total: int | None, *, desc: str, unit: str, stream: IO[str], interval: float,
                 clock: Any = time.monotonic) -> None:
        self.total, self.desc, self.unit, self.stream, self.interval = total, desc, unit, stream, interval
        self.n = 0
        self.postfix = ""
        self._clock = clock
        self._start = self._last = clock()
        self._closed = False
        self._printed = False

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._clock() - self._last >= self.interval:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._printed:
                self._line(final=True)

    def _line(self, *, final: bool = False) -> None:
        now = self._clock()
        self._last, self._printed = now, True
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        state = "done in" if final else "elapsed"
        self.stream.write(f"{self.desc}: {done} {self.unit}{pct}{extra}; {_duration(now - self._start)} {state}\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def progress(total: int | None, *, desc: str, unit: str = "step", enabled: bool = True,
             stream: IO[str] | None = None, interval: float | None = None) -> Any:
    """A tqdm bar on a terminal, a :class:`LineProgress` elsewhere, nothing when not ``enabled``."""
    from tqdm.auto import tqdm

    stream = sys.stderr if stream is None else stream
    if not enabled:
        return tqdm(total=total, disable=True)
    if hasattr(stream, "isatty") and stream.isatty():
        return tqdm(total=total, desc=desc, unit=unit, file=stream, leave=False)
    return LineProgress(total, desc=desc, unit=unit, stream=stream,
                        interval=DEFAULT_INTERVAL if interval is None else interval)
