"""PII detection quality, scanning speed and memory, each against a baseline in the same run.

1. Detection quality on presidio-research's synthetic set (1500 sentences, 2863 labelled spans),
   scored the presidio-research way: dataset labels mapped to Presidio's (their
   ``DATASET_TO_PRESIDIO_MAPPING``), a prediction matches a label when their character spans
   overlap with IoU >= 0.9, precision / recall / F2 pooled over all PII (type-agnostic) and per
   entity type (type must match), pooled any-PII token recall and redaction survivors, for plain
   Presidio (its documented set-up, same spaCy model) and rai-audit's defaults, from one run.
2. Documents per second of :class:`privacy.pii.PIIScanner` against a plain loop of
   ``AnalyzerEngine.analyze`` on the same engine, interleaved, with identical detections checked.
3. Peak memory scanning CSV files of 10,000 and 100,000 rows (streamed in chunks).

Run: ``.venv/bin/python benchmarks/bench_pii.py`` (about 4 minutes on 2 cores) on an idle machine;
``--quality-only`` writes the detection-quality section alone (no timings). The speed section is
refused (see ``benchmarks/_results.py``) when the 1-minute load average exceeds the core count.
"""

from __future__ import annotations

import json
import os
import re
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                   "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": ""}.items():
    os.environ.setdefault(key, value)
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._results import load_record, write_section  # noqa: E402
from privacy import pii_nlp  # noqa: E402
from privacy.pii import SPACY_MODEL, Detection, PIIScanner, build_analyzer, spacy_model_available  # noqa: E402

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
N_LOOP = 4_000
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


def plain_presidio() -> Any:
    """Presidio as its documentation sets it up, with the same spaCy model: nothing of ours."""
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    configuration = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": SPACY_MODEL}]}
    return AnalyzerEngine(nlp_engine=NlpEngineProvider(nlp_configuration=configuration).create_engine(),
                          supported_languages=["en"])


def token_recall(samples: list[dict], predictions: list[list[Detection]]) -> tuple[int, int]:
    """Pooled any-PII token recall: word tokens inside scored labels that any prediction overlaps."""
    hit = total = 0
    for sample, found in zip(samples, predictions, strict=True):
        for s in sample["spans"]:
            if DATASET_TO_PRESIDIO[s["entity_type"]] == "O":
                continue
            for m in re.finditer(r"\w+", sample["full_text"][s["start_position"] : s["end_position"]]):
                start, end = s["start_position"] + m.start(), s["start_position"] + m.end()
                total += 1
                hit += any(d.start < end and start < d.end for d in found)
    return hit, total


def survivors(samples: list[dict], redacted: list[str]) -> Counter:
    """Labelled values (every dataset label) still present verbatim in the redacted text, by label."""
    left: Counter = Counter()
    for sample, text in zip(samples, redacted, strict=True):
        for s in sample["spans"]:
            value = s["entity_value"].strip()
            left[(s["entity_type"], "labelled")] += 1
            left[(s["entity_type"], "left")] += bool(value) and value in text
    return left


def _row(label: str, plain: tuple, ours: tuple) -> str:
    return (f"| {label} | {plain[3]} | {_fmt(plain[0])} | {_fmt(ours[0])} | {_fmt(plain[1])} | {_fmt(ours[1])} | "
            f"{_fmt(plain[2])} | {_fmt(ours[2])} | {plain[4]} | {ours[4]} |")


def run_engines(samples: list[dict]) -> dict:
    """Detections and redactions from plain Presidio and from rai-audit's defaults, in one run."""
    from presidio_anonymizer import AnonymizerEngine

    from privacy.redact import PIIRedactor

    texts = [s["full_text"] for s in samples]
    plain = plain_presidio()
    anonymizer = AnonymizerEngine()
    plain_results = [plain.analyze(text=t, language="en", score_threshold=THRESHOLD) for t in texts]
    ours = PIIScanner(score_threshold=THRESHOLD, progress=False)
    return {
        "plain": ([[Detection(r.entity_type, r.start, r.end, r.score) for r in rs] for rs in plain_results],
                  [anonymizer.anonymize(text=t, analyzer_results=rs).text for t, rs in zip(texts, plain_results, strict=True)]),
        "ours": (list(ours.analyze(texts)), PIIRedactor(score_threshold=THRESHOLD).transform(texts)),
        "info": ours.engine_info,
    }


def quality(samples: list[dict]) -> tuple[str, dict]:
    if not spacy_model_available():
        return "### Detection quality\n\nNot measured: the spaCy model is not installed.\n", {}
    runs = run_engines(samples)
    scores = {k: evaluate(samples, runs[k][0]) for k in ("plain", "ours")}
    tokens = {k: token_recall(samples, runs[k][0]) for k in ("plain", "ours")}
    left = {k: survivors(samples, runs[k][1]) for k in ("plain", "ours")}
    info = runs["info"]
    entities = sorted(set(scores["plain"]["per_entity"]) | set(scores["ours"]["per_entity"]))
    empty = (None, None, None, 0, 0)
    labels = sorted({label for label, _ in left["plain"]})
    lines = [
        "### Detection quality: plain Presidio vs rai-audit's defaults, presidio-research synthetic set",
        "",
        f"{len(samples)} sentences, {sum(len(s['spans']) for s in samples)} labelled spans. Both engines use the same "
        f"spaCy model (`{SPACY_MODEL}`), score threshold {THRESHOLD} and every entity type they support, in one run. "
        "**Plain Presidio** is `AnalyzerEngine(nlp_engine=NlpEngineProvider({'nlp_engine_name': 'spacy', 'models': "
        "[...]}).create_engine())` and `AnonymizerEngine().anonymize`, nothing of ours; **rai-audit** is "
        "`PIIScanner()` / `PIIRedactor()` with their defaults. Dataset labels are mapped to Presidio's with "
        "presidio-research's `DATASET_TO_PRESIDIO_MAPPING` (TITLE, AGE, ZIP_CODE not scored; GPE, NRP, STREET_ADDRESS "
        f"-> LOCATION; DOMAIN_NAME -> URL); a prediction matches a label when their character spans (edge "
        f"whitespace/punctuation trimmed) have IoU >= {IOU} and, per entity, the same type; overlapping predictions "
        "are resolved to the best-scoring one. F2 weights recall 4x. Pooled = any PII matched, type ignored.",
        "",
        "| entity | labelled | precision plain | precision rai-audit | recall plain | recall rai-audit | F2 plain | "
        "F2 rai-audit | predicted plain | predicted rai-audit |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[_row(e, scores["plain"]["per_entity"].get(e, empty), scores["ours"]["per_entity"].get(e, empty)) for e in entities],
        _row("**pooled (any PII)**", scores["plain"]["pooled"], scores["ours"]["pooled"]),
        "",
        "Pooled any-PII token recall (word tokens inside scored labels overlapped by any detection): plain "
        f"{tokens['plain'][0] / tokens['plain'][1]:.3f} ({tokens['plain'][0]} of {tokens['plain'][1]}), rai-audit "
        f"{tokens['ours'][0] / tokens['ours'][1]:.3f} ({tokens['ours'][0]} of {tokens['ours'][1]}). Published for "
        f"Presidio with `en_core_web_lg` (presidio-research): precision {PUBLISHED['precision']}, recall "
        f"{PUBLISHED['recall']}, F2 {PUBLISHED['f2']}.",
        "",
        "Redaction survivors: labelled values (every dataset label, scored or not) still present verbatim after "
        "redaction with the `replace` operator (lower is better).",
        "",
        "| dataset label | labelled values | left by plain Presidio | left by rai-audit |",
        "|---|---|---|---|",
        *[f"| {label} | {left['plain'][(label, 'labelled')]} | {left['plain'][(label, 'left')]} | "
          f"{left['ours'][(label, 'left')]} |" for label in labels],
        f"| **all** | {sum(left['plain'][(x, 'labelled')] for x in labels)} | "
        f"{sum(left['plain'][(x, 'left')] for x in labels)} | {sum(left['ours'][(x, 'left')] for x in labels)} |",
        "",
        f"rai-audit's engine: {info.description} Its NER configuration is Presidio's own default (ORGANIZATION "
        "kept); it only also ignores spaCy labels that are not personal data (CARDINAL, MONEY, ...), which Presidio's "
        "spaCy recognizer drops anyway.",
        "",
    ]
    return "\n".join(lines), {"scores": scores, "tokens": tokens, "left": left}


def _key(found: Any) -> list:
    return sorted((d[0], d[1], d[2], round(d[3], 6)) for d in found)


def throughput(samples: list[dict], *, rounds: int = 8) -> str:
    """Docs/s of a plain ``analyze()`` loop and of ``PIIScanner`` on the same engine, interleaved.

    Each round times the loop and the scanner on a fresh slice of the documents, in alternating
    order, so a change in machine load hits both; detections are compared document by document.
    """
    texts = list(dict.fromkeys(s["full_text"] for s in samples))
    docs = [f"{texts[i % len(texts)]} {FILLERS[i // len(texts)]}" for i in range(N_DOCS)]
    assert len(set(docs)) == N_DOCS
    mean_chars = sum(map(len, docs)) / len(docs)
    rows = []
    engines = ["spacy", "pattern"] if spacy_model_available() else ["pattern"]
    per_round = N_LOOP // rounds
    for engine in engines:
        # The spaCy baseline is plain Presidio (its documented set-up, nothing of ours), whose
        # detections the default scanner must reproduce; the pattern one is our no_op engine.
        analyzer = plain_presidio() if engine == "spacy" else build_analyzer(engine=engine)[0]
        analyzer.analyze(text=docs[0], language="en", score_threshold=THRESHOLD)  # warm-up
        scanner = PIIScanner(engine=engine, score_threshold=THRESHOLD, progress=False)
        list(scanner.analyze(docs[-10:]))  # warm-up
        times = {"loop": 0.0, "scan": 0.0}
        same, ratios = 0, []
        for r in range(rounds):
            chunk = docs[r * per_round : (r + 1) * per_round]
            out = {}
            took = {}
            for variant in (("loop", "scan") if r % 2 == 0 else ("scan", "loop")):
                start = time.perf_counter()
                if variant == "loop":
                    out[variant] = [[(x.entity_type, x.start, x.end, x.score) for x in
                                     analyzer.analyze(text=t, language="en", score_threshold=THRESHOLD)] for t in chunk]
                else:
                    out[variant] = list(scanner.analyze(chunk))
                took[variant] = time.perf_counter() - start
                times[variant] += took[variant]
            ratios.append(took["loop"] / took["scan"])
            same += sum(_key(a) == _key(b) for a, b in zip(out["loop"], out["scan"], strict=True))
        n = per_round * rounds
        rows.append((engine, f"plain loop of `AnalyzerEngine.analyze` ({n:,} docs; baseline)", n / times["loop"], 1.0))
        rows.append((engine, f"`PIIScanner`, 1 process ({n:,} docs; per round {min(ratios):.2f}x to "
                             f"{max(ratios):.2f}x)", n / times["scan"], same / n))
    base = {engine: rate for engine, what, rate, _ in rows if "baseline" in what}
    lines = [
        "### Scanning speed: short documents",
        "",
        f"Distinct documents (presidio-research sentences plus a short closing phrase; mean {mean_chars:.0f} "
        f"characters), every entity type, score threshold {THRESHOLD}. The plain loop calls `analyze()` once per "
        "text (for spaCy, on a plain Presidio `AnalyzerEngine` with the same model); `PIIScanner` sends batches through spaCy's `nlp.pipe` and then the recognizers. "
        f"{rounds} interleaved rounds (order alternating). \"Same detections\" compares every document's "
        "detections (type, offsets, score) with the loop's.",
        "",
        "| engine | how | docs/s | speed-up vs loop | same detections |",
        "|---|---|---|---|---|",
    ]
    for engine, what, rate, same in rows:
        lines.append(f"| {engine} | {what} | {rate:,.0f} | {rate / base[engine]:.2f}x | {same:.1%} |")
    lines.append("")
    return "\n".join(lines)


def profile(samples: list[dict], n: int = 2_000) -> str:
    """Where the scanner's time goes on the speed documents, and what that leaves for any speed-up.

    Each stage timed on its own over the same documents: spaCy's tokenizer and every pipeline
    component through ``pipe`` (batches of 256, as the scanner runs them), then Presidio's
    recognizers one by one on the finished NLP artifacts, and the rest of ``analyze`` (context
    enhancement, de-duplication, result objects). The plain loop pays the same recognizers per
    document, so the recognizers' share bounds the speed-up of anything that batches the NLP.
    """
    if not spacy_model_available():
        return ""
    texts = list(dict.fromkeys(s["full_text"] for s in samples))
    docs = [f"{texts[i % len(texts)]} {FILLERS[i // len(texts)]}" for i in range(n)]
    analyzer, _ = build_analyzer(engine="spacy")
    nlp = analyzer.nlp_engine.nlp["en"]
    list(nlp.pipe(docs[:50]))
    stages: dict[str, float] = {}
    start = time.perf_counter()
    parsed = list(nlp.tokenizer.pipe(docs))
    stages["spaCy tokenizer"] = time.perf_counter() - start
    for name, component in nlp.pipeline:
        start = time.perf_counter()
        parsed = list(component.pipe(parsed, batch_size=256)) if hasattr(component, "pipe") else [component(d) for d in parsed]
        stages[f"spaCy {name}"] = time.perf_counter() - start
    artifacts = list(pii_nlp.process_batch(analyzer.nlp_engine, docs, "en", batch_size=256))
    for art in artifacts:  # the profile times the lemma stages separately below
        art.lemmas  # noqa: B018
    recognizers: dict[str, float] = {}
    for recognizer in analyzer.registry.recognizers:
        start = time.perf_counter()
        for doc, art in zip(docs, artifacts, strict=True):
            recognizer.analyze(text=doc, entities=recognizer.supported_entities, nlp_artifacts=art)
        recognizers[recognizer.name] = time.perf_counter() - start
    start = time.perf_counter()
    for doc, art in zip(docs, artifacts, strict=True):
        analyzer.analyze(text=doc, language="en", nlp_artifacts=art, score_threshold=THRESHOLD)
    analyze_total = time.perf_counter() - start
    # The scanner runs the lemma stages only for the documents whose detections read lemmas.
    held = pii_nlp.supports(analyzer.nlp_engine, "en")
    lazy = list(pii_nlp.process_batch(analyzer.nlp_engine, docs, "en", batch_size=256))
    for doc, art in zip(docs, lazy, strict=True):
        analyzer.analyze(text=doc, language="en", nlp_artifacts=art, score_threshold=THRESHOLD)
    share = sum(getattr(a, "_lemmas", None) is not None for a in lazy) / n if held else 1.0
    stages = {(f"{k} (for {share:.0%} of documents)" if k[len("spaCy "):] in held else k):
              (v * share if k[len("spaCy "):] in held else v) for k, v in stages.items()}
    plain = plain_presidio()
    start = time.perf_counter()
    for doc in docs[:300]:
        plain.analyze(text=doc, language="en", score_threshold=THRESHOLD)
    loop_ms = (time.perf_counter() - start) * 1e3 / 300
    spacy_total, recog_total = sum(stages.values()), sum(recognizers.values())
    total = spacy_total + analyze_total
    top = sorted(recognizers.items(), key=lambda kv: -kv[1])[:4]
    rows = [*(f"| {k} | {v * 1e3 / n:.2f} | {v / total:.0%} |" for k, v in stages.items()),
            *(f"| Presidio {k} | {v * 1e3 / n:.2f} | {v / total:.0%} |" for k, v in top),
            f"| Presidio's {len(recognizers) - len(top)} other recognizers | {(recog_total - sum(v for _, v in top)) * 1e3 / n:.2f} | "
            f"{(recog_total - sum(v for _, v in top)) / total:.0%} |",
            f"| rest of `analyze` (context enhancement, de-duplication, results) | {(analyze_total - recog_total) * 1e3 / n:.2f} | "
            f"{(analyze_total - recog_total) / total:.0%} |"]
    return "\n".join([
        "### Where the scanner's time goes",
        "",
        f"Each stage alone over {n:,} of the speed documents (spaCy components through `pipe` in batches of 256, "
        "then each Presidio recognizer on the finished NLP artifacts), milliseconds per document:",
        "",
        "| stage | ms per document | share |",
        "|---|---|---|",
        *rows,
        f"| **total** | **{total * 1e3 / n:.2f}** | |",
        "",
        f"Presidio's part ({analyze_total * 1e3 / n:.2f} ms per document) is the same work in the plain loop, one "
        f"document at a time; the plain loop here took {loop_ms:.2f} ms per document. Even with spaCy's stages "
        f"free, a scanner running Presidio's recognizers as they are could be at most **{loop_ms / (analyze_total * 1e3 / n):.1f}x** "
        f"the loop; with spaCy's stages as measured, {loop_ms / (total * 1e3 / n):.2f}x. The rest is spaCy's own "
        "pipeline (tokenizer, tagger, parser, attribute ruler, lemmatizer, NER, all needed: the NER obeys the "
        "parser's sentence boundaries, and the lemmas feed Presidio's context words), now with its matrix products "
        "through numpy's BLAS rather than blis (`privacy.pii._numpy_blas`). The attribute ruler and lemmatizer run "
        f"only for the {share:.0%} of documents with a detection that looks for context words (`privacy.pii_nlp`: "
        "Presidio reads lemmas nowhere else, and the NER after them reads none of what they write); their rows "
        "count that share of their full-pass time.",
        "",
    ])


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


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quality-only", action="store_true",
                        help="only the detection-quality section (no timings; safe on a loaded machine)")
    args = parser.parse_args(argv)
    samples = json.loads(DATASET.read_text(encoding="utf-8"))
    text, _ = quality(samples)
    print(text, flush=True)
    write_section("pii", "## PII detection quality (`bench_pii.py`)\n\n" + text, timings=False)
    if args.quality_only:
        return
    started = time.perf_counter()
    parts = ["## PII scanning speed and memory (`bench_pii.py`)", ""]
    with load_record() as load:
        for part in (throughput(samples), profile(samples), memory(samples)):
            parts.append(part)
            print(part, flush=True)
    parts.append(f"Total {time.perf_counter() - started:.0f} s on {os.cpu_count()} cores.")
    write_section("pii-speed", "\n".join(parts), load=load)


if __name__ == "__main__":
    main()
