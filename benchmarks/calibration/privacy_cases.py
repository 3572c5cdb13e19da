"""Calibration case of the membership inference probe (loss-threshold attack)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from audit.context import AuditContext
from benchmarks.calibration.core import ALARM_STATUSES, Case, Outcome, covers
from benchmarks.calibration.stand_ins import LikelihoodTable

__all__ = ["privacy_cases"]


def _membership_case() -> Case:
    n = 200

    def run(seed: int, effect: float) -> Outcome:
        import pandas as pd
        from scipy.stats import norm

        from privacy.probes import MembershipInferenceProbe

        rng = np.random.default_rng(seed)
        # Loss of each text: N(3, 1) for non-members, N(3 - effect, 1) for members (the model fits them better).
        members = {f"member text {i}": float(3 - effect + rng.standard_normal()) for i in range(n)}
        others = {f"unseen text {i}": float(3 + rng.standard_normal()) for i in range(n)}
        losses = {**members, **others}
        model = LikelihoodTable(lambda t: -losses[t], model_id=f"membership-{seed}", n_tokens=lambda t: 1)
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for name, texts in (("members.csv", members), ("non_members.csv", others)):
                path = Path(tmp) / name
                pd.DataFrame({"text": list(texts)}).to_csv(path, index=False)
                paths.append(str(path))
            result = MembershipInferenceProbe(members=paths[0], non_members=paths[1]).run(
                model, AuditContext(seed=seed).for_probe("membership_inference"))
        truth = float(norm.cdf(effect / np.sqrt(2)))
        metric = result.metrics.get("auc")
        return Outcome(status=result.status, alarm=result.status in ALARM_STATUSES,
                       covered={"AUC": covers(metric.ci if metric else None, truth)}, truth=truth)

    return Case(
        probe="membership_inference", verdict="attack AUC significantly above 0.5",
        description=(f"{n} members and {n} non-members; a causal LM whose loss on each text is known: N(3, 1) for "
                     "non-members, N(3 - effect, 1) for members. Truth: AUC = Phi(effect / sqrt 2)."),
        effect_unit="members' loss shift, in loss sd",
        effects={"null": 0.0, "small": 0.15, "medium": 0.3, "large": 0.6},
        run=run, interval="auc 95% bootstrap interval vs Phi(effect / sqrt 2)",
        settings={"probe params": "defaults (alpha=0.05, n_boot=2000)"},
    )


def privacy_cases() -> list[Case]:
    return [_membership_case()]
