"""Integrated Gradients throughput: our batched implementation against Captum one example at a time.

Both compute the same thing on the bundled all-MiniLM-L6-v2 with a classification head:
``LayerIntegratedGradients`` over the input embeddings, ``n_steps=50``, the probability of the
predicted class, a baseline with every non-special token replaced by [PAD], and the convergence
delta. The batched version pads length-sorted examples into one call (Captum expands the steps
inside it); the baseline calls Captum once per example, as its tutorials do. Runs are interleaved
and the median is reported; the attributions of the two are compared to show they agree.
Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_attribution.py``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(key, value)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from audit import load_target  # noqa: E402
from benchmarks._results import write_section  # noqa: E402
from probes.attribution import Explainer, builtin_examples  # noqa: E402

N_STEPS = 50
N_EXAMPLES = 12
ROUNDS = 3


def examples() -> list[str]:
    """Our built-in sentences: short reviews and statements about people, 9 to 18 tokens."""
    return builtin_examples()[:N_EXAMPLES]


def main() -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    target = load_target(None, kind="sequence-classification", progress=False, device="cpu")
    explainer = Explainer.for_target(target)
    encs = [explainer.encode(t) for t in examples()]
    classes = explainer.predict(encs)
    model = target.model

    from captum.attr import LayerIntegratedGradients

    def forward(input_ids: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(input_ids=input_ids).logits, dim=-1)

    lig = LayerIntegratedGradients(forward, model.get_input_embeddings())

    def one_at_a_time() -> list[np.ndarray]:
        out = []
        for enc, cls in zip(encs, classes, strict=True):
            ids = torch.tensor([list(enc.ids)])
            base = torch.tensor([explainer.baseline_ids(enc)])
            attr, _delta = lig.attribute(ids, baselines=base, target=cls, n_steps=N_STEPS,
                                         return_convergence_delta=True)
            out.append(attr.sum(-1)[0].detach().numpy())
        return out

    def batched() -> list[np.ndarray]:
        return [r.scores for r in explainer.attribute(encs, classes, "integrated_gradients", n_steps=N_STEPS)]

    def timed(fn):
        start = time.perf_counter()
        result = fn()
        return time.perf_counter() - start, result

    # Warm-up (allocator, lazy imports) on both paths before measuring.
    timed(lambda: explainer.attribute(encs[:2], classes[:2], "integrated_gradients", n_steps=N_STEPS))
    timed(lambda: lig.attribute(torch.tensor([list(encs[0].ids)]), target=classes[0], n_steps=N_STEPS))
    single_times, batched_times = [], []
    for _ in range(ROUNDS):
        t_single, single_attr = timed(one_at_a_time)
        t_batched, batched_attr = timed(batched)
        single_times.append(t_single)
        batched_times.append(t_batched)
    diff = 0.0
    for enc, a, b in zip(encs, single_attr, batched_attr, strict=True):
        content = enc.content
        diff = max(diff, float(np.max(np.abs(a[content] - b[content]))))
    n = len(encs)
    t_single, t_batched = statistics.median(single_times), statistics.median(batched_times)
    speedup = t_single / t_batched
    lengths = [len(e) for e in encs]
    body = f"""## Integrated Gradients: batched vs Captum one example at a time (`bench_attribution.py`)

Model: bundled all-MiniLM-L6-v2 with a (random) classification head, CPU, {torch.get_num_threads()} threads;
{n} built-in sentences of {min(lengths)} to {max(lengths)} tokens; `LayerIntegratedGradients` over the input
embeddings, `n_steps={N_STEPS}`, convergence delta on; median of {ROUNDS} interleaved rounds.

| implementation | median wall time (s) | examples / s | ratio |
|---|---|---|---|
| Captum, one example per call (baseline) | {t_single:.2f} | {n / t_single:.2f} | 1.00 |
| rai-audit `Explainer`, length-sorted batch in one call | {t_batched:.2f} | {n / t_batched:.2f} | **{speedup:.2f}x** |

- Speed-up of the batched implementation: **{speedup:.2f}x** (aim: at least 1.5x).
- Largest difference between the two implementations' token attributions: {diff:.1e}.
- All rounds (s): one at a time {', '.join(f'{t:.2f}' for t in single_times)}; batched {', '.join(f'{t:.2f}' for t in batched_times)}.
"""
    write_section("attribution", body)
    print(body)


if __name__ == "__main__":
    main()
