"""Shared helpers for the benchmark scripts: each rewrites only its own section of benchmarks/RESULTS.md.

Speed is evidence only on a machine that is not busy with something else. Every script therefore
records the 1-minute load average before and after it measures (:func:`load_record`), times the
variants it compares in interleaved rounds (:func:`interleaved`), and hands the record to
:func:`write_section`, which refuses to write timings measured while the load average exceeded the
number of cores (or, with ``RAI_BENCH_ALLOW_LOADED=1``, writes them marked "not comparable").
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = ("# Benchmark results\n\nWritten by the scripts in `benchmarks/`; each rewrites only its own section. "
          "Times are ratios against a baseline measured in the same run on the same machine, with the 1-minute "
          "load average recorded before and after; timings measured while it exceeded the core count are not "
          "written (or are marked not comparable).\n")
ALLOW_LOADED = "RAI_BENCH_ALLOW_LOADED"
OTHERS_LIMIT = 0.25  # share of the cores other processes may use during a measurement
LOADED = ("benchmark {name!r}: {reason}, so its timings are not comparable and RESULTS.md was not changed. "
          "Re-run it on an idle machine, or set " + ALLOW_LOADED + "=1 to write the section marked 'not comparable'.")
NOT_COMPARABLE = ("**Not comparable:** measured while the 1-minute load average ({load:.2f}) exceeded the {cores} "
                  "core(s); other work shared the CPU, so these timings are not evidence.")


def cores() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _load_now() -> float:
    return os.getloadavg()[0]


_clock = time.monotonic


def _proc_stats() -> dict[int, tuple[int, float]]:
    """Every process's parent and CPU seconds so far (its own and its reaped children's), from /proc."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            out[int(entry.name)] = parse_stat(int(entry.name), (entry / "stat").read_text(), tick)
        except OSError:
            continue
    return out


def parse_stat(pid: int, text: str, tick: float = 100.0) -> tuple[int, float]:
    """Parent and CPU seconds from a ``/proc/PID/stat`` line: the process's own time plus its
    reaped children's, except for init (pid 1), which reaps every orphan, this benchmark's own
    included (Ray workers whose raylet exited first end up there)."""
    fields = text.rsplit(")", 1)[1].split()
    ticks = fields[11:13] if pid == 1 else fields[11:15]
    return int(fields[1]), sum(int(f) for f in ticks) / tick


def _own(stats: dict[int, tuple[int, float]]) -> set[int]:
    """This process and its descendants (Ray workers, benchmark subprocesses)."""
    own, grew = {os.getpid()}, True
    while grew:
        more = {pid for pid, (parent, _) in stats.items() if parent in own} - own
        own |= more
        grew = bool(more)
    return own


def other_cpu(before: dict[int, tuple[int, float]], after: dict[int, tuple[int, float]], seconds: float) -> float:
    """Cores used on average by processes outside this one's tree between two :func:`_proc_stats`."""
    own = _own(after) | _own(before)
    used = sum(after[pid][1] - before[pid][1] for pid in after.keys() & before.keys() if pid not in own)
    return max(0.0, used) / max(seconds, 1e-9)


@dataclass
class LoadRecord:
    """The 1-minute load average before and after a measurement, and the cores it is judged against."""

    before: float
    after: float | None = None
    cores: int = 1
    #: Cores used on average, during the measurement, by processes outside the benchmark's own tree.
    others: float | None = None

    @property
    def worst(self) -> float:
        """The load the verdict rests on: before, and after less what the benchmark's own processes ran."""
        if self.after is None:
            return self.before
        return max(self.before, self.others if self.others is not None else self.after)

    @property
    def comparable(self) -> bool:
        """Whether the machine was idle when the measurement began (load average at most one
        runnable task per core) and other processes used at most a quarter of the cores during it
        (measured from /proc, so the benchmark's own threads and workers do not count against it)."""
        if self.after is None or self.before > self.cores:
            return False
        if self.others is not None:
            return self.others <= OTHERS_LIMIT * self.cores
        return self.after <= self.cores

    @property
    def reason(self) -> str:
        """Why the measurement is not comparable (empty when it is)."""
        if self.comparable:
            return ""
        if self.after is None:
            return "the load after the measurement was not recorded"
        if self.before > self.cores:
            return f"the 1-minute load average was {self.before:.2f} when it began, above the {self.cores} core(s)"
        if self.others is not None:
            return (f"other processes used {self.others:.2f} core(s) during it (at most "
                    f"{OTHERS_LIMIT * self.cores:.2f} of the {self.cores} core(s) allowed)")
        return f"the 1-minute load average was {self.after:.2f} after it, above the {self.cores} core(s)"

    def line(self) -> str:
        after = "not recorded" if self.after is None else f"{self.after:.2f}"
        others = "" if self.others is None else f"; other processes used {self.others:.2f} core(s) during it"
        verdict = "comparable" if self.comparable else "NOT comparable"
        return (f"1-minute load average {self.before:.2f} before and {after} after (the benchmark's own work "
                f"included){others}, on {self.cores} core(s): {verdict}.")


@contextlib.contextmanager
def load_record() -> Iterator[LoadRecord]:
    """Record the load average around the ``with`` block: ``with load_record() as load: ...``."""
    record = LoadRecord(before=_load_now(), cores=cores())
    stats, start = _proc_stats(), _clock()
    try:
        yield record
    finally:
        record.after = _load_now()
        if stats:
            record.others = other_cpu(stats, _proc_stats(), _clock() - start)


def interleaved(variants: Mapping[str, Callable[[], Any]], *, rounds: int, warmup: int = 1) -> tuple[
        dict[str, list[float]], dict[str, Any]]:
    """Wall time of each variant in ``rounds`` interleaved rounds, after ``warmup`` untimed rounds.

    Each round runs every variant once, the order rotated from round to round, so a slow spell of
    the machine (or a warming cache) falls on all of them alike instead of on whichever ran last.
    Returns the times per variant and each variant's last return value.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    last: dict[str, Any] = {}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            last[name] = variants[name]()
            times[name].append(time.perf_counter() - start)
    return times, last


def write_section(name: str, body: str, *, load: LoadRecord | None = None, timings: bool = True) -> bool:
    """Replace section ``name`` of RESULTS.md with ``body``; returns whether it was written.

    Parameters
    ----------
    load : LoadRecord, optional
        The load around the measurement. Without it only the load at writing time is known, and a
        timing section is written marked not comparable when that exceeds the core count.
    timings : bool, default=True
        Whether the section reports speed. A section of counts, sizes or error rates is written
        whatever the load (the load is still stated).
    """
    if load is None:  # a script that does not record the load: judge by the load at writing time
        now = _load_now()
        load_line = (f"1-minute load average {now:.2f} when written (not recorded around the measurement), "
                     f"on {cores()} core(s).")
        loaded, worst, n_cores = now > cores(), now, cores()
    else:
        load_line = load.line()
        loaded, worst, n_cores = not load.comparable, load.worst, load.cores
        if timings and loaded and os.environ.get(ALLOW_LOADED) != "1":
            sys.stderr.write(LOADED.format(name=name, reason=load.reason) + "\n")
            return False
    banner = NOT_COMPARABLE.format(load=worst, cores=n_cores) + "\n\n" if timings and loaded else ""
    start, end = f"<!-- bench:{name} start -->", f"<!-- bench:{name} end -->"
    stamp = (f"_Run {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
             f"{platform.python_version()}; {load_line}_\n")
    heading, _, rest = body.strip().partition("\n")
    text_body = f"{heading}\n\n{banner}{rest.lstrip()}" if heading.startswith("#") and banner else banner + body.strip()
    block = f"{start}\n{text_body.rstrip()}\n\n{stamp}{end}"
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else HEADER
    if start in text and end in text:
        before, rest_text = text.split(start, 1)
        after = rest_text.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text, encoding="utf-8")
    return True
