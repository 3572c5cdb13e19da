"""benchmarks/_results.py: timings measured under load are refused (or marked), variants are interleaved."""

from __future__ import annotations

import pytest

from benchmarks import _results


@pytest.fixture()
def results_file(tmp_path, monkeypatch):
    path = tmp_path / "RESULTS.md"
    path.write_text(_results.HEADER + "\n<!-- bench:other start -->\nkeep me\n<!-- bench:other end -->\n")
    monkeypatch.setattr(_results, "RESULTS", path)
    monkeypatch.setattr(_results, "cores", lambda: 2)
    monkeypatch.delenv(_results.ALLOW_LOADED, raising=False)
    monkeypatch.setattr(_results, "_proc_stats", dict)  # no /proc reading: judged by the load average alone
    return path


def _loads(monkeypatch, *values):
    seq = iter(values)
    monkeypatch.setattr(_results, "_load_now", lambda: next(seq))


def test_idle_run_is_written_with_its_load(results_file, monkeypatch):
    _loads(monkeypatch, 0.4, 1.1)
    with _results.load_record() as load:
        pass
    assert load.comparable and (load.before, load.after, load.cores) == (0.4, 1.1, 2)
    assert _results.write_section("speed", "## Speed\n\n| a | 1.0 |", load=load)
    text = results_file.read_text()
    assert "| a | 1.0 |" in text and "keep me" in text
    assert ("1-minute load average 0.40 before and 1.10 after (the benchmark's own work included), on 2 core(s): "
            "comparable.") in text
    assert "Not comparable" not in text


@pytest.mark.parametrize(("before", "after"), [(2.5, 0.5), (0.5, 2.01)])
def test_timings_under_load_are_refused(results_file, monkeypatch, capsys, before, after):
    _loads(monkeypatch, before, after)
    with _results.load_record() as load:
        pass
    original = results_file.read_text()
    assert not load.comparable
    assert _results.write_section("speed", "## Speed\n\n| a | 1.0 |", load=load) is False
    assert results_file.read_text() == original
    err = capsys.readouterr().err
    assert "benchmark 'speed'" in err and f"{max(before, after):.2f}" in err and "2 core(s)" in err


def _fake_procs(monkeypatch, own_cpu: float, other_cpu: float, seconds: float = 10.0):
    """Two /proc snapshots: this process with a worker child, and an unrelated process."""
    import os

    me = os.getpid()
    snapshots = iter([{1: (0, 0.0), me: (1, 0.0), 900001: (me, 0.0), 900002: (1, 0.0)},
                      {1: (0, 0.0), me: (1, 0.0), 900001: (me, own_cpu), 900002: (1, other_cpu)}])
    clock = iter([0.0, seconds])
    monkeypatch.setattr(_results, "_proc_stats", lambda: next(snapshots))
    monkeypatch.setattr(_results, "_clock", lambda: next(clock))


def test_the_benchmarks_own_workers_do_not_count_as_load(results_file, monkeypatch):
    """A federated run was refused at 2.07 on 2 cores: the load was its own Ray workers."""
    _loads(monkeypatch, 0.3, 2.07)
    _fake_procs(monkeypatch, own_cpu=19.0, other_cpu=0.5)  # 1.9 cores its own, 0.05 others'
    with _results.load_record() as load:
        pass
    assert load.comparable and load.others == pytest.approx(0.05)
    assert _results.write_section("speed", "## Speed\n\n| a | 1.0 |", load=load)
    assert "other processes used 0.05 core(s) during it" in results_file.read_text()


def test_other_processes_busy_during_the_run_refuse_it(results_file, monkeypatch, capsys):
    _loads(monkeypatch, 0.3, 1.2)
    _fake_procs(monkeypatch, own_cpu=5.0, other_cpu=8.0)  # another job used 0.8 cores throughout
    with _results.load_record() as load:
        pass
    assert not load.comparable and load.others == pytest.approx(0.8)
    assert _results.write_section("speed", "## Speed\n\n| a | 1.0 |", load=load) is False
    assert "0.80" in capsys.readouterr().err


def test_allowed_under_load_is_marked_not_comparable(results_file, monkeypatch):
    monkeypatch.setenv(_results.ALLOW_LOADED, "1")
    _loads(monkeypatch, 5.0, 6.0)
    with _results.load_record() as load:
        pass
    assert _results.write_section("speed", "## Speed\n\nbody", load=load)
    text = results_file.read_text()
    section = text.split("<!-- bench:speed start -->")[1]
    assert section.index("## Speed") < section.index("**Not comparable:**") < section.index("body")
    assert "NOT comparable" in section


def test_sizes_are_written_whatever_the_load(results_file, monkeypatch):
    _loads(monkeypatch, 9.0, 9.0)
    with _results.load_record() as load:
        pass
    assert _results.write_section("sizes", "## Sizes\n\n| card | 200 KiB |", load=load, timings=False)
    text = results_file.read_text()
    assert "| card | 200 KiB |" in text and "**Not comparable:**" not in text


def test_a_script_without_a_record_is_judged_at_writing_time(results_file, monkeypatch):
    _loads(monkeypatch, 3.0)
    assert _results.write_section("legacy", "## Legacy\n\nt")
    text = results_file.read_text()
    assert "**Not comparable:**" in text and "not recorded around the measurement" in text


def test_interleaved_rotates_the_order_and_times_every_round():
    calls: list[str] = []
    variants = {name: (lambda n=name: calls.append(n) or n) for name in ("a", "b", "c")}
    times, last = _results.interleaved(variants, rounds=3, warmup=1)
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert last == {"a": "a", "b": "b", "c": "c"}


@pytest.mark.slow
def test_bench_attribution_runs_and_checks_agreement(results_file, monkeypatch):
    """A shrunken run of the real script: every variant runs, attributions agree, the section is written."""
    from benchmarks import bench_attribution as bench

    monkeypatch.setattr(bench, "N_EXAMPLES", 3)
    monkeypatch.setattr(bench, "N_STEPS", 4)
    monkeypatch.setattr(bench, "ROUNDS", 1)
    monkeypatch.setattr(bench, "BUDGETS", (64,))
    monkeypatch.setattr(_results, "_load_now", lambda: 0.5)
    bench.main()
    text = results_file.read_text()
    assert "Captum, one example per call" in text and "64-token passes" in text and "(default)" in text
    assert "comparable." in text and "NOT comparable" not in text


@pytest.mark.slow
def test_bench_counterfactual_runs(results_file, monkeypatch):
    from benchmarks import bench_counterfactual as bench

    monkeypatch.setattr(bench, "AXES", ["gender"])
    monkeypatch.setattr(bench, "REPEATS", 1)
    monkeypatch.setattr(_results, "_load_now", lambda: 0.5)
    bench.main()
    assert "Ratio probe / bare forward" in results_file.read_text()


def test_summary_reads_each_goal_from_its_section_and_says_when_it_cannot(results_file):
    from benchmarks import summary

    results_file.write_text(_results.HEADER + "\n<!-- bench:dp start -->\n- against non-private, fully trainable: "
                            "**1.42x** (aim)\n<!-- bench:dp end -->\n<!-- bench:inference start -->\n**Not comparable:** "
                            "x\n- Overhead ratio of the probe against the bare pass: **0.90** (aim)\n"
                            "<!-- bench:inference end -->\n<!-- bench:federated start -->\n| federated, rounds only | 9.0 "
                            "| **1.70x** |\n<!-- bench:federated end -->\n")
    summary.main()
    table = _results.RESULTS.read_text().split("<!-- bench:summary start -->")[1]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "| 1.42 | <= 1.5x | **met** |" in rows["DP-SGD step (ghost clipping) vs non-private step, MiniLM fully trainable"]
    assert "not comparable" in rows["SEAT probe vs bare forward pass"]
    assert "| 1.70 | <= 1.5x | not met |" in rows["simulated FedAvg rounds vs centralized, MiniLM 4 x 300 rows, 3 rounds"]
    assert "not run" in rows["whole audit of the bundled model, wall time (s)"]
    assert _results.RESULTS.read_text().index("bench:summary") < _results.RESULTS.read_text().index("bench:dp")


def test_orphans_reaped_by_init_are_not_counted_as_other_work():
    """A federated run showed 0.45 cores of 'other' work: its own Ray workers, reaped by init."""
    line = "{pid} (name) S {ppid} 1 1 0 -1 0 0 0 0 0 {utime} {stime} {cutime} {cstime} 20 0 1 0 5"
    assert _results.parse_stat(1, line.format(pid=1, ppid=0, utime=10, stime=5, cutime=900, cstime=100)) == (0, 0.15)
    assert _results.parse_stat(42, line.format(pid=42, ppid=7, utime=10, stime=5, cutime=900, cstime=100)) == (7, 10.15)
