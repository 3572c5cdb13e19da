"""PII detection quality, scanning speed and memory, each against a baseline in the same run.

1. Detection quality on presidio-research's synthetic set (1500 sentences, 2863 labelled spans),
   scored the presidio-research way: dataset labels mapped to Presidio's (their
   ``DATASET_TO_PRESIDIO_MAPPING``), a prediction matches a label when their character spans
   overlap with IoU >= 0.9, precision / recall / F2 pooled over all PII (type-agnostic) and per
   entity type (type must match). For the spaCy engine and the pattern-only engine.
2. Documents per second scanning 10,000 short documents with :class:`privacy.pii.PIIScanner`
   against a plain loop of ``AnalyzerEngine.analyze`` on the same engine.
3. Peak memory scanning CSV files of 10,000 and 100,000 rows (streamed in chunks).

Run: ``.venv/bin/python benchmarks/bench_pii.py`` (about 4 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                   "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": ""}.items():
    os.environ.setdefault(key, value)
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._results import write_section  # noqa: E402
from privacy.pii import Detection, PIIScanner, build_analyzer, spacy_model_available  # noqa: E402

SHARED = Path(os.environ.get("RAI_AUDIT_SHARED_DATA", REPO.parent / "shared" / "data"))
DATASET = SHARED / "presidio_research" / "presidio_research_synth_dataset_v2.json"
# presidio-research, presidio_evaluator/models/configuration.py: dataset label -> Presidio entity ("O": not scored).
DATASET_TO_PRESIDIO = {
    "STREET_ADDRESS": "LOCATION", "PERSON": "PERSON", "GPE": "LOCATION", "ORGANIZATION": "ORGANIZATION",
    "PHONE_NUMBER": "PHONE_NUMBER", "DATE_TIME": "DATE_TIME", "TITLE": "O", "CREDIT_CARD": "CREDIT_CARD",
    "US_SSN": "US_SSN", "AGE": "O", "NRP": "LOCATION", "ZIP_CODE": "O", "EMAIL_ADDRESS": "EMAIL_ADDRESS",
    "DOMAIN_NAME": "URL", "IP_ADDRESS": "IP_ADDRESS", "IBAN_CODE": "IBAN_CODE", "US_DRIVER_LICENSE": "US_DRIVER_LICENSE",
}
PUBLISHED = {"engine": "Presidio, en_core_web_lg (presidio-research)", "precision": 0.685, "recall": 0.603, "f2": 0.618}
IOU = 0.9
THRESHOLD = 0.4
N_DOCS = 10_000
N_LOOP = 2_000
FILLERS = ["Thanks.", "Please advise.", "See below.", "Noted.", "Kind regards.", "Any update?", "Talk soon.",
           "Cheers.", "More soon.", "All the best."]
_TRIM = string.whitespace + string.punctuation


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start] in _TRIM:
        start += 1
    while end > start and text[end - 1] in _TRIM:
        end -= 1
    return start, end


def _iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union else 0.0


def _resolve(detections: list[Detection]) -> list[Detection]:
    """One label per character, as token tagging gives: the best-scoring (then longest) span wins."""
    kept: list[Detection] = []
    for d in sorted(detections, key=lambda d: (-d.score, -(d.end - d.start), d.start)):
        if all(d.end <= k.start or d.start >= k.end for k in kept):
            kept.append(d)
    return sorted(kept, key=lambda d: d.start)


def _prf(tp: int, predicted: int, annotated: int) -> tuple[float | None, float | None, float | None]:
    p = tp / predicted if predicted else None
    r = tp / annotated if annotated else None
    f2 = 5 * p * r / (4 * p + r) if p is not None and r is not None and (p + r) > 0 else (0.0 if p is not None and r is not None else None)
    return p, r, f2


def evaluate(samples: list[dict], predictions: list[list[Detection]]) -> dict:
    """Span-level scores: pooled (type-agnostic, as presidio-research's PII metrics) and per entity."""
    pooled = Counter()
    per = {}
    for sample, found in zip(samples, predictions, strict=True):
        text = sample["full_text"]
        gold = [(DATASET_TO_PRESIDIO[s["entity_type"]], _trimmed(text, s["start_position"], s["end_position"]))
                for s in sample["spans"] if DATASET_TO_PRESIDIO[s["entity_type"]] != "O"]
        pred = [(d.entity_type, _trimmed(text, d.start, d.end)) for d in _resolve(found)]
        pooled["annotated"] += len(gold)
        pooled["predicted"] += len(pred)
        for entity, _ in gold:
            per.setdefault(entity, Counter())["annotated"] += 1
        for entity, _ in pred:
            per.setdefault(entity, Counter())["predicted"] += 1
        for same_type in (False, True):
            used: set[int] = set()
            for entity, span in gold:
                options = [(_iou(span, p), i) for i, (pe, p) in enumerate(pred)
                           if i not in used and (not same_type or pe == entity)]
                best, index = max(options, default=(0.0, -1))
                if best >= IOU:
                    used.add(index)
                    if same_type:
                        per[entity]["tp"] += 1
                    else:
                        pooled["tp"] += 1
    return {"pooled": (*_prf(pooled["tp"], pooled["predicted"], pooled["annotated"]), pooled["annotated"], pooled["predicted"]),
            "per_entity": {e: (*_prf(c["tp"], c["predicted"], c["annotated"]), c["annotated"], c["predicted"])
                           for e, c in sorted(per.items())}}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def quality(samples: list[dict]) -> tuple[str, dict]:
    kept = sorted({v for v in DATASET_TO_PRESIDIO.values() if v != "O"})
    engines = ["spacy", "pattern"] if spacy_model_available() else ["pattern"]
    rows, details = [], {}
    for engine in engines:
        _, info = build_analyzer(engine=engine)
        entities = [e for e in kept if e in info.entities]
        scanner = PIIScanner(entities=entities, engine=engine, score_threshold=THRESHOLD, progress=False)
        start = time.perf_counter()
        found = list(scanner.analyze([s["full_text"] for s in samples]))
        seconds = time.perf_counter() - start
        scores = evaluate(samples, found)
        details[engine] = (scores, entities, info)
        p, r, f2, n_gold, n_pred = scores["pooled"]
        label = f"rai-audit `{engine}` ({info.model or 'no NER model'})"
        rows.append(f"| {label} | {_fmt(p)} | {_fmt(r)} | **{_fmt(f2)}** | {n_gold} | {n_pred} | {seconds:.1f} |")
    lines = [
        "### Detection quality: presidio-research synthetic set",
        "",
        f"{len(samples)} sentences, {sum(len(s['spans']) for s in samples)} labelled spans; dataset labels mapped to "
        "Presidio's with presidio-research's `DATASET_TO_PRESIDIO_MAPPING` (TITLE, AGE, ZIP_CODE not scored; "
        f"GPE, NRP, STREET_ADDRESS -> LOCATION; DOMAIN_NAME -> URL). Score threshold {THRESHOLD}; a prediction "
        f"matches a label when their character spans (edge whitespace/punctuation trimmed) have IoU >= {IOU}; "
        "overlapping predictions are resolved to the best-scoring one (one label per character). Pooled = any "
        "PII matched, type ignored; F2 weights recall 4x.",
        "",
        "| engine | precision | recall | F2 | labelled spans | predicted spans | seconds |",
        "|---|---|---|---|---|---|---|",
        *rows,
        f"| published: {PUBLISHED['engine']} | {PUBLISHED['precision']:.3f} | {PUBLISHED['recall']:.3f} | "
        f"{PUBLISHED['f2']:.3f} | | | |",
        "",
    ]
    for engine, (scores, entities, info) in details.items():
        lines += [f"Per entity, `{engine}` engine (type must match):", "",
                  "| entity | precision | recall | F2 | labelled | predicted |", "|---|---|---|---|---|---|"]
        for entity, (p, r, f2, n_gold, n_pred) in scores["per_entity"].items():
            note = " (not searched)" if entity not in entities else ""
            lines.append(f"| {entity}{note} | {_fmt(p)} | {_fmt(r)} | {_fmt(f2)} | {n_gold} | {n_pred} |")
        if info.cannot_find:
            lines.append(f"\nThe pattern-only engine cannot find {', '.join(info.cannot_find)}: their labels all count as misses.")
        lines.append("")
    return "\n".join(lines), details


def throughput(samples: list[dict]) -> str:
    texts = list(dict.fromkeys(s["full_text"] for s in samples))
    docs = [f"{texts[i % len(texts)]} {FILLERS[i // len(texts)]}" for i in range(N_DOCS)]
    assert len(set(docs)) == N_DOCS
    mean_chars = sum(map(len, docs)) / len(docs)
    key = lambda found: sorted((d[0], d[1], d[2], round(d[3], 6)) for d in found)  # noqa: E731
    rows = []
    engines = ["spacy", "pattern"] if spacy_model_available() else ["pattern"]
    for engine in engines:
        analyzer, _ = build_analyzer(engine=engine)
        analyzer.analyze(text=docs[0], language="en", score_threshold=THRESHOLD)  # warm-up
        scanner = PIIScanner(engine=engine, score_threshold=THRESHOLD, progress=False)
        n_scan = N_DOCS if engine == "spacy" else N_LOOP
        # Interleaved halves, so a change in machine load hits the baseline and the scanner alike.
        loop_time = scan_time = 0.0
        loop: list = []
        found: list = []
        for part in (0, 1):
            chunk = docs[part * N_LOOP // 2 : (part + 1) * N_LOOP // 2]
            start = time.perf_counter()
            loop += [analyzer.analyze(text=t, language="en", score_threshold=THRESHOLD) for t in chunk]
            loop_time += time.perf_counter() - start
            chunk = docs[part * n_scan // 2 : (part + 1) * n_scan // 2]
            start = time.perf_counter()
            found += list(scanner.analyze(chunk))
            scan_time += time.perf_counter() - start
        reference = [key((r.entity_type, r.start, r.end, r.score) for r in rs) for rs in loop]
        same = sum(key(f) == ref for f, ref in zip(found[:N_LOOP], reference, strict=True)) / N_LOOP
        rows.append((engine, f"plain loop of `AnalyzerEngine.analyze` ({N_LOOP:,} docs; baseline)", N_LOOP / loop_time, 1.0))
        rows.append((engine, f"`PIIScanner`, batched, 1 process ({n_scan:,} docs)", n_scan / scan_time, same))
        if engine == "spacy":
            parallel = PIIScanner(engine=engine, score_threshold=THRESHOLD, n_process=2, progress=False)
            start = time.perf_counter()
            found2 = list(parallel.analyze(docs[:N_LOOP]))
            rate = N_LOOP / (time.perf_counter() - start)
            same2 = sum(key(f) == ref for f, ref in zip(found2, reference, strict=True)) / N_LOOP
            rows.append((engine, f"`PIIScanner`, batched, 2 forked processes ({N_LOOP:,} docs)", rate, same2))
    base = {engine: rate for engine, what, rate, _ in rows if "baseline" in what}
    lines = [
        "### Scanning speed: 10,000 short documents",
        "",
        f"{N_DOCS:,} distinct documents (presidio-research sentences plus a short closing phrase; mean "
        f"{mean_chars:.0f} characters), every entity type, score threshold {THRESHOLD}. The plain loop calls "
        "`analyze()` once per text (spaCy runs one document at a time); `PIIScanner` sends batches through spaCy's "
        "`nlp.pipe` (via the NLP engine's `process_batch`) and then the recognizers, optionally in forked worker "
        f"processes. \"Same detections\" compares each of the first {N_LOOP:,} documents with the loop's result. "
        "The loop and the 1-process scanner run in interleaved halves; the pattern-only engine is timed on the "
        f"first {N_LOOP:,} documents only, to keep the benchmark short.",
        "",
        "| engine | how | docs/s | speed-up vs loop | same detections |",
        "|---|---|---|---|---|",
    ]
    for engine, what, rate, same in rows:
        ratio = rate / base[engine]
        lines.append(f"| {engine} | {what} | {rate:,.0f} | {'**' if ratio >= 2 else ''}{ratio:.2f}x{'**' if ratio >= 2 else ''} | {same:.1%} |")
    lines.append("")
    return "\n".join(lines)


_MEMORY_SCRIPT = """
import resource, sys, time
from pathlib import Path
from privacy.pii import PIIScanner

def peak_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

scanner = PIIScanner(engine="pattern", entities=["EMAIL_ADDRESS", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN"],
                     progress=False)
warm = Path(sys.argv[1]).with_name("warm-up.csv")
warm.write_text("text\\nwarm up jo@example.com\\n", encoding="utf-8")
scanner.scan_table(warm, columns=["text"])  # libraries the reader loads on first use are not the scan's growth
try:  # reset the peak to the current RSS, so the peak below is the scan's own (Linux >= 4.0)
    Path("/proc/self/clear_refs").write_text("5")
    reset = True
except OSError:
    reset = False
before = peak_kib()
start = time.perf_counter()
summary = scanner.scan_table(sys.argv[1], columns=["text"], chunk_size=10_000)
seconds = time.perf_counter() - start
print(summary.rows, summary.documents_with_pii, before, peak_kib(), seconds, int(reset))
"""


def memory(samples: list[dict]) -> str:
    texts = [s["full_text"] for s in samples]
    rows = []
    peak_was_reset = False
    with tempfile.TemporaryDirectory() as tmp:
        for n in (10_000, 100_000):
            path = Path(tmp) / f"rows_{n}.csv"
            import pandas as pd

            pd.DataFrame({"id": range(n), "text": [f"{texts[i % len(texts)]} (row {i})" for i in range(n)]}).to_csv(path, index=False)
            done = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(path)], cwd=REPO, capture_output=True,
                                  text=True, check=True)
            n_rows, with_pii, before, after, seconds, reset = done.stdout.split()
            peak_was_reset = reset == "1"
            rows.append(f"| {int(n_rows):,} | {path.stat().st_size / 2**20:.1f} | {int(before) / 1024:.0f} | "
                        f"{int(after) / 1024:.0f} | **{(int(after) - int(before)) / 1024:.0f}** | {float(seconds):.1f} | {int(with_pii):,} |")
    return "\n".join([
        "### Peak memory: streaming a large CSV",
        "",
        "`PIIScanner.scan_table` on CSV files of 10,000 and 100,000 rows (`chunk_size=10000`), pattern-only engine "
        "with five regex entity types so the 100,000-row run stays short; each in a fresh process. RSS after loading "
        "the engine and scanning a one-row file (libraries loaded on first use are not the scan's growth), then the "
        "peak RSS during the scan "
        + ("(the kernel's peak counter `VmHWM` is reset just before the scan)." if peak_was_reset else
           "(`getrusage` peak, which also covers the engine's start-up: growth can only be under-stated here)."),
        "",
        "| rows | file (MiB) | RSS before scan (MiB) | peak RSS during scan (MiB) | growth (MiB) | seconds | rows with PII |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])


def main() -> None:
    samples = json.loads(DATASET.read_text(encoding="utf-8"))
    started = time.perf_counter()
    parts = ["## PII detection and scanning (`bench_pii.py`)", ""]
    text, _ = quality(samples)
    parts.append(text)
    print(text, flush=True)
    text = throughput(samples)
    parts.append(text)
    print(text, flush=True)
    text = memory(samples)
    parts.append(text)
    print(text, flush=True)
    parts.append(f"Total benchmark time {time.perf_counter() - started:.0f} s on {os.cpu_count()} cores "
                 "(shared with other work, so rates are indicative; ratios come from the same run).")
    write_section("pii", "\n".join(parts))


if __name__ == "__main__":
    main()
