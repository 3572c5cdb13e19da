"""Progress on a non-terminal: periodic one-line reports, silence for short work, a bar on a terminal."""

from __future__ import annotations

import io

from audit.progress import LineProgress, progress


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_periodic_lines_on_a_non_terminal():
    clock, stream = _Clock(), io.StringIO()
    bar = LineProgress(400, desc="DP-SGD", unit="step", stream=stream, interval=30.0, clock=clock)
    for step in range(400):
        clock.now = step * 0.5  # 200 s of work
        bar.update(1)
        if step == 100:
            bar.set_postfix(loss="0.6931", eps="1.20")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 200 // 30 + 1  # one every 30 s, and the last
    assert lines[0] == "DP-SGD: 61/400 step (15%); 30s elapsed"
    assert lines[-1] == "DP-SGD: 400/400 step (100%), loss=0.6931, eps=1.20; 3m20s done in"


def test_short_work_stays_silent():
    clock, stream = _Clock(), io.StringIO()
    with LineProgress(10, desc="embed", unit="batch", stream=stream, interval=30.0, clock=clock) as bar:
        for _ in range(10):
            clock.now += 1.0
            bar.update(1)
    assert stream.getvalue() == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_a_bar_and_disabled_gets_nothing():
    assert not isinstance(progress(5, desc="x", stream=_Terminal()), LineProgress)
    assert isinstance(progress(5, desc="x", stream=io.StringIO()), LineProgress)
    silent = progress(5, desc="x", enabled=False, stream=io.StringIO())
    assert not isinstance(silent, LineProgress) and silent.disable


def test_cda_and_dp_training_report_progress_on_a_non_terminal(monkeypatch, tmp_path, capsys):
    import pandas as pd

    from audit import load_target
    from privacy.dp import DPFineTuner
    from probes.debias.cda import CDAFineTuner
    from tests.tiny import make_tiny_model

    monkeypatch.setattr("audit.progress.DEFAULT_INTERVAL", 0.0)  # every step reports
    model = make_tiny_model("sequence-classification", tmp_path / "clf")
    texts = [f"{who} wrote the report" for who in ("he", "she", "john", "mary")] * 4
    labels = [0, 1] * 8
    capsys.readouterr()
    CDAFineTuner(epochs=1, seed=0).fit(load_target(model, progress=False), texts, labels)
    assert "CDA fine-tuning: 1/" in capsys.readouterr().err
    data = tmp_path / "train.csv"
    pd.DataFrame({"text": texts * 4, "label": labels * 4}).to_csv(data, index=False)
    DPFineTuner(target_epsilon=8.0, epochs=1, batch_size=16, max_physical_batch_size=16, progress=True).fit(str(model), str(data))
    assert "DP-SGD: 1/" in capsys.readouterr().err
