"""Privacy attacks and the one-run DP audit on tiny GPT-2 models: bounds and attack rates, not timings.

1. One-run audit (Steinke, Nasr and Jagielski 2023) on ``DPFineTuner``: the 95% lower bound on
   epsilon next to the accountant's epsilon, for correctly noised runs and for a run whose noise
   was switched off inside Opacus (a broken implementation that still accounts as noisy).
2. Membership inference at low FPR on a model overfit to its members and on a model that saw none
   of the samples: TPR at 0.1% and 1% FPR with 95% bootstrap intervals, and AUC, for every attack.

Writes the ``privacy_audit`` section of benchmarks/RESULTS.md. Run:
``.venv/bin/python benchmarks/bench_privacy_audit.py`` (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(key, value)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

AUDIT_CANARIES = 1000
MIA_SAMPLES = 200  # members and non-members of the overfit model; 1% FPR needs at least 100 non-members
CLEAN_SAMPLES = 1000  # of the model that saw none: enough non-members to resolve 0.1% FPR


def _silence_noise() -> object:
    import opacus.optimizers.optimizer as plain
    import opacus.optimizers.optimizer_fast_gradient_clipping as ghost
    import torch

    saved = (plain._generate_noise, ghost._generate_noise)

    def silent(std, reference, generator=None, secure_mode=False):
        return torch.zeros_like(reference)

    plain._generate_noise = ghost._generate_noise = silent
    return saved


def _restore_noise(saved: object) -> None:
    import opacus.optimizers.optimizer as plain
    import opacus.optimizers.optimizer_fast_gradient_clipping as ghost

    plain._generate_noise, ghost._generate_noise = saved  # type: ignore[misc]


def audit_rows(base: Path) -> list[str]:
    import numpy as np
    import pandas as pd

    from privacy.dp import DPFineTuner
    from tests.test_leakage import WORDS

    rng = np.random.default_rng(0)
    data = pd.DataFrame({"text": [" ".join(rng.choice(WORDS, 6)) for _ in range(200)]})
    rows = []
    for label, epsilon, noise in (("noise switched off (broken)", 1.0, False), ("DP-SGD", 1.0, True),
                                  ("DP-SGD", 8.0, True)):
        saved = None if noise else _silence_noise()
        try:
            tuner = DPFineTuner(target_epsilon=epsilon, accountant="rdp", batch_size=16, epochs=5, learning_rate=1e-2,
                                audit_canaries=AUDIT_CANARIES, eval_fraction=0.0).fit(str(base), data)
        finally:
            if saved is not None:
                _restore_noise(saved)
        audit, guesser = tuner.record_["audit"], tuner.record_["audit"]["guesser"]
        rows.append(f"| {label} | {tuner.noise_multiplier_:.3g}{'' if noise else ' (not applied)'} | "
                    f"{tuner.epsilon_:.3f} | **{audit['epsilon_lower_bound']:.3f}** | "
                    f"{guesser['correct']} / {guesser['guesses']} | "
                    f"{'yes' if audit['consistent'] else '**no: bound above epsilon**'} |")
    return rows


def mia_rows(base: Path, root: Path) -> list[str]:
    from audit import AuditConfig, Auditor, load_target
    from privacy.probes import MembershipInferenceProbe
    from tests.test_leakage import _write_jsonl, random_sentences, train_causal_lm

    members = random_sentences(MIA_SAMPLES, seed=21)
    overfit = train_causal_lm(base, members, root / "overfit", steps=200)
    cases = [("overfit to its members", overfit, members, random_sentences(MIA_SAMPLES, seed=22),
              {"reference_base": str(base), "n_reference_models": 4, "reference_epochs": 3}),
             ("saw none of the samples", base, random_sentences(CLEAN_SAMPLES, seed=23),
              random_sentences(CLEAN_SAMPLES, seed=24), {})]
    rows = []
    for label, model, ins, outs, extra in cases:
        if extra:
            extra["reference_data"] = _write_jsonl(root / "population.jsonl", random_sentences(400, seed=25))
        probe = MembershipInferenceProbe(members=_write_jsonl(root / "m.jsonl", ins),
                                         non_members=_write_jsonl(root / "n.jsonl", outs), n_boot=1000,
                                         max_samples=max(len(ins), len(outs)), **extra)
        result = Auditor(AuditConfig(seed=0), probes=[probe]).run(load_target(model, progress=False, device="cpu"))
        table = result.results[0].tables[0]
        for row in table.rows:
            if "(not run)" in str(row[0]):
                continue
            rows.append(f"| {label} ({len(ins)} / {len(outs)}) | {row[0]} | {row[1]:.3f} [{row[2]}] | "
                        f"{row[3]:.3f} [{row[4]}] | {row[5]:.3f} [{row[6]}] |")
    return rows


def main() -> int:
    import torch

    from benchmarks._results import write_section
    from tests.tiny import make_tiny_model

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = make_tiny_model("causal-lm", root / "base")
        audit = audit_rows(base)
        mia = mia_rows(base, root)
    body = "\n".join([
        "## Privacy attacks and the one-run DP audit (bounds and rates, not timings)",
        "",
        f"Tiny GPT-2 (hidden 32, 2 layers, random init), `benchmarks/bench_privacy_audit.py`. One-run audit "
        f"(Steinke, Nasr and Jagielski 2023): {AUDIT_CANARIES} random canaries, each trained on with probability 1/2 "
        "(OS entropy), 200 user rows, 5 epochs, batch 16, RDP accountant, delta from the default; the bound is the "
        "95% lower bound on epsilon from guessing the canaries by loss drop (best of three guess counts, "
        "Bonferroni-corrected). The broken run accounts for the calibrated noise but adds none (Opacus' noise "
        "generator patched to zero): the audit must catch it.",
        "",
        "| run | noise multiplier | accountant epsilon | empirical lower bound | correct guesses | consistent |",
        "|---|---|---|---|---|---|",
        *audit,
        "",
        "A bound far below epsilon is expected (one run, a black-box guesser); it is not evidence of privacy. A bound "
        "above epsilon would be, at 95% confidence, evidence that the training does not deliver its guarantee.",
        "",
        "Membership inference, TPR at low FPR (Carlini et al. 2022) with 95% percentile-bootstrap intervals "
        "(members and non-members resampled separately, threshold re-chosen in each resample). Overfit model: "
        "200 steps full batch on its members; LiRA and RMIA use 4 reference models fine-tuned from the base model "
        "on random halves of 200 population sentences (the other 200 are RMIA's comparison population).",
        "",
        "| model (members / non-members) | attack | AUC [95% CI] | TPR at 0.1% FPR [95% CI] | TPR at 1% FPR [95% CI] |",
        "|---|---|---|---|---|",
        *mia,
        "",
        f"With {MIA_SAMPLES} non-members the smallest FPR a threshold can show is {1 / MIA_SAMPLES:.1%}: the "
        "overfit model's TPR at 0.1% FPR is its TPR at FPR 0. A low attack success is not a proof of privacy.",
    ])
    try:
        write_section("privacy_audit", body, timings=False)
    except TypeError:  # the helper without the timings flag
        write_section("privacy_audit", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
