"""The performance goals of issue 20 in one table, read from the sections the benchmarks wrote.

Nothing is measured here: each number is taken from its benchmark's own section of RESULTS.md
(written on an idle machine, with the load stated there), so the table cannot disagree with the
evidence below it. A section that is missing, or written marked "Not comparable", shows as such.

Run after the benchmarks: ``.venv/bin/python -m benchmarks.summary``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from benchmarks._results import RESULTS, write_section


@dataclass(frozen=True)
class Goal:
    measure: str
    section: str
    pattern: str  # a regex whose first group is the number
    goal: str
    met: str  # "<= 1.5", ">= 2", ... applied to the number
    explained: str = ""  # where the profile of a goal not met is (a sub-heading of the section)


GOALS = (
    Goal("Integrated Gradients, `Explainer` batched vs Captum one example at a time", "attribution",
         r"over Captum one at a time: \*\*([\d.]+)x\*\*", ">= 2x", ">= 2",
         r"ceiling for any batching is \*\*([\d.]+)x\*\*"),
    Goal("`PIIScanner` 1 process vs plain `analyze()` loop (identical detections)", "pii-speed",
         r"\| spacy \| `PIIScanner`, 1 process[^|]*\| [\d,]+ \| ([\d.]+)x \|", ">= 3x", ">= 3",
         r"with spaCy's stages as measured, ([\d.]+)x"),
    Goal("DP-SGD step (ghost clipping) vs non-private step, MiniLM fully trainable", "dp",
         r"non-private, fully trainable: \*\*([\d.]+)x\*\*", "<= 1.5x", "<= 1.5"),
    Goal("simulated FedAvg rounds vs centralized, MiniLM 4 x 300 rows, 3 rounds", "federated",
         r"\| federated, rounds only \| [\d.]+ \| \*\*([\d.]+)x\*\* \|", "<= 1.5x", "<= 1.5"),
    Goal("SEAT probe vs bare forward pass", "inference",
         r"Overhead ratio of the probe against the bare pass: \*\*([\d.]+)\*\*", "<= 1.15", "<= 1.15"),
    Goal("counterfactual probe vs bare forward pass", "counterfactual",
         r"\*\*Ratio probe / bare forward: ([\d.]+)\*\*", "<= 1.15", "<= 1.15"),
    Goal("length-sorted vs given-order batching, mixed-length workload", "inference",
         r"mixed-length workload: \*\*([\d.]+)x\*\*", ">= 1.5x", ">= 1.5"),
    Goal("whole audit of the bundled model, wall time (s)", "audit", r"Fastest run ([\d.]+) s", "< 60 s", "< 60"),
    Goal("whole audit of the bundled model, peak RSS (MiB)", "audit", r"highest peak RSS ([\d.]+) MiB", "< 2048 MiB",
         "< 2048"),
)

_PROFILES = {"attribution": "ceiling for any batching (profile in the section)",
             "pii-speed": "prediction from the per-stage profile in the section",
             "dp": "per-part profile in the section"}


def section(text: str, name: str) -> str | None:
    start, end = f"<!-- bench:{name} start -->", f"<!-- bench:{name} end -->"
    if start not in text or end not in text:
        return None
    return text.split(start, 1)[1].split(end, 1)[0]


def _holds(value: float, rule: str) -> bool:
    op, bound = rule.split()
    return {"<=": value <= float(bound), ">=": value >= float(bound), "<": value < float(bound)}[op]


def row(goal: Goal, text: str) -> str:
    body = section(text, goal.section)
    if body is None:
        return f"| {goal.measure} | not run | {goal.goal} | no section `{goal.section}` |"
    found = re.search(goal.pattern, body)
    if found is None:
        return f"| {goal.measure} | not found | {goal.goal} | section `{goal.section}` has no such line |"
    value = float(found.group(1))
    loaded = "**Not comparable:**" in body
    verdict = "not comparable (measured under load)" if loaded else ("**met**" if _holds(value, goal.met) else "not met")
    if verdict == "not met" and goal.section in _PROFILES:
        extra = re.search(goal.explained, body) if goal.explained else None
        verdict += f"; {_PROFILES[goal.section]}" + (f": {extra.group(1)}x" if extra else "")
    return f"| {goal.measure} | {found.group(1)} | {goal.goal} | {verdict} |"


def main() -> None:
    text = RESULTS.read_text(encoding="utf-8")
    rows = "\n".join(row(goal, text) for goal in GOALS)
    body = f"""## Performance goals (issue 20), from the sections below (`summary.py`)

Each number is read from its benchmark's section (the load it was measured at is stated there; a
section measured under load would show as not comparable). Ratios are against a baseline measured
in the same run.

| measure | now | goal | verdict |
|---|---|---|---|
{rows}
"""
    if "<!-- bench:summary start -->" not in text:  # first run: place the table first, under the header
        head, sep, rest = text.partition("\n<!-- bench:")
        RESULTS.write_text(f"{head}\n<!-- bench:summary start -->\n<!-- bench:summary end -->\n{sep}{rest}",
                           encoding="utf-8")
    write_section("summary", body, timings=False)
    print(body)


if __name__ == "__main__":
    main()
