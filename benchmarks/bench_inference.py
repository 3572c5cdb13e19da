"""SEAT probe wall time against a bare batched forward pass over the same sentences, same model, same run.

Also measures what length-sorted batching buys over batching in the given order, on the SEAT
sentences (short, similar lengths) and on a mixed-length workload: the distinct texts of
presidio-research's synthetic set (``../shared/data``; 11 to 100+ tokens, like an audit dataset),
where :meth:`audit.target.AuditTarget.embed` (length-sorted batches) is timed against the same bare
pass in the given order.
Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_inference.py``.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(key, value)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from audit import AuditConfig, Auditor, load_target  # noqa: E402
from benchmarks._results import interleaved, load_record, write_section  # noqa: E402
from probes.seat import builtin_tests  # noqa: E402

REPEATS = 3
BATCH = 32
SHARED = Path(os.environ.get("RAI_AUDIT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MIXED = SHARED / "presidio_research" / "presidio_research_synth_dataset_v2.json"
N_MIXED = 800


def bare_forward(model, tokenizer, sentences, batch_size=BATCH):
    """What a person would write: tokenize each batch with padding, one forward pass, mean-pool."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(sentences), batch_size):
            enc = tokenizer(sentences[start:start + batch_size], padding=True, truncation=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1)
            out.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(out)


def main() -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    target = load_target(progress=False, device="cpu", batch_size=BATCH)
    tests = builtin_tests()
    sentences = list(dict.fromkeys(s for t in tests.values() for s in (*t.X, *t.Y, *t.A, *t.B)))
    by_length = sorted(sentences, key=lambda s: -len(target.tokenizer(s)["input_ids"]))
    auditor = Auditor(AuditConfig(select=["seat"]))
    model, tokenizer = target.model, target.tokenizer

    def probe_run():
        target.clear_cache()
        target._token_cache.clear()
        auditor.run(target)

    def stats_only():
        auditor.run(target)  # embeddings cached by the probe run before it in the same round

    variants = {"probe": probe_run, "bare": lambda: bare_forward(model, tokenizer, sentences),
                "sorted": lambda: bare_forward(model, tokenizer, by_length)}
    with load_record() as load:
        times, _ = interleaved(variants, rounds=REPEATS, warmup=1)
        probe_run()
        cached, _ = interleaved({"stats": stats_only}, rounds=REPEATS, warmup=0)
    probe_t, bare_t, sorted_t = (statistics.median(times[k]) for k in ("probe", "bare", "sorted"))
    stats_only_t = statistics.median(cached["stats"])
    body = f"""## SEAT probe vs a bare forward pass (`bench_inference.py`)

Model: bundled all-MiniLM-L6-v2 on CPU ({torch.get_num_threads()} threads); {len(sentences)} unique sentences from the
{len(tests)} built-in SEAT tests; batch size {BATCH}; median of {REPEATS} interleaved rounds (order rotated each round).

| what | median wall time (s) | ratio |
|---|---|---|
| bare batched forward pass, sentences in given order (baseline) | {bare_t:.3f} | 1.00 |
| bare batched forward pass, sentences sorted by length | {sorted_t:.3f} | {sorted_t / bare_t:.2f} |
| SEAT probe, whole (embeddings + permutation tests + bootstrap + figure) | {probe_t:.3f} | **{probe_t / bare_t:.2f}** |
| SEAT probe with embeddings already cached (statistics and figure only) | {stats_only_t:.3f} | {stats_only_t / bare_t:.2f} |

- Overhead ratio of the probe against the bare pass: **{probe_t / bare_t:.2f}** (aim: at most 1.15).
- Speed-up of length-sorted over unsorted batching: **{bare_t / sorted_t:.2f}x**.
- Against the length-sorted bare pass (the probe's own batching), the ratio is {probe_t / sorted_t:.2f}.
"""
    body += mixed_lengths(target)
    written = write_section("inference", body, load=load)
    print(body)
    if not written:
        raise SystemExit(1)


def mixed_lengths(target) -> str:
    """Length-sorted batching on texts of mixed length: the target's ``embed`` against a bare pass."""
    import json

    if not MIXED.exists():
        return f"\nMixed-length workload not run: {MIXED} is missing.\n"
    texts = list(dict.fromkeys(s["full_text"] for s in json.loads(MIXED.read_text(encoding="utf-8"))))[:N_MIXED]
    lengths = sorted(len(ids) for ids in target.tokenize(texts))
    by_length = sorted(texts, key=lambda s: -len(target.tokenizer(s)["input_ids"]))
    model, tokenizer = target.model, target.tokenizer

    def embed():
        target.clear_cache()
        target._token_cache.clear()
        return target.embed(texts)

    variants = {"bare": lambda: bare_forward(model, tokenizer, texts), "sorted": lambda: bare_forward(model, tokenizer, by_length),
                "embed": embed}
    times, _ = interleaved(variants, rounds=REPEATS, warmup=1)
    bare_t, sorted_t, embed_t = (statistics.median(times[k]) for k in ("bare", "sorted", "embed"))
    same = float(abs(embed() - bare_forward(model, tokenizer, texts).numpy()).max())
    return f"""
### Mixed-length workload

{len(texts)} distinct texts of presidio-research's synthetic set, {lengths[0]} to {lengths[-1]} tokens (median
{lengths[len(lengths) // 2]}); batch size {BATCH}; median of {REPEATS} interleaved rounds. `AuditTarget.embed` is the
project's own path (tokenize once, sort by length, batch, mean-pool, restore the order); its embeddings differ from
the bare pass's by at most {same:.1e}.

| what | median wall time (s) | speed-up vs given order |
|---|---|---|
| bare batched forward pass, texts in given order (baseline) | {bare_t:.3f} | 1.00x |
| bare batched forward pass, texts sorted by length | {sorted_t:.3f} | {bare_t / sorted_t:.2f}x |
| `AuditTarget.embed` (length-sorted batches) | {embed_t:.3f} | **{bare_t / embed_t:.2f}x** |

- Speed-up of the project's length-sorted batching on a mixed-length workload: **{bare_t / embed_t:.2f}x** (aim: at least 1.5x).
"""


if __name__ == "__main__":
    main()
