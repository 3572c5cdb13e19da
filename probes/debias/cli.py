"""The ``rai-audit debias`` command: apply one technique and write a new model directory.

Registered in the ``rai_audit.commands`` entry-point group; the core CLI knows it only from there.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from audit._validate import seed_arg
from audit.errors import ConfigError, DataError, NotApplicableError

__all__ = ["TECHNIQUES", "DebiasCommand", "debias"]

TECHNIQUES = ("cda", "sentence-debias", "inlp", "threshold")
_KINDS = {"cda": ("sequence-classification",), "threshold": ("sequence-classification",),
          "sentence-debias": ("encoder", "sequence-classification"), "inlp": ("encoder", "sequence-classification")}


def _builtin_sentences() -> list[str]:
    text = (resources.files("probes.debias") / "data" / "templates.json").read_text(encoding="utf-8")
    return list(json.loads(text)["sentences"])


def _side(text: str, word_lists: list[dict[str, Any]]) -> int | None:
    """0 when the text's listed words all come from the first group, 1 from the second, else None."""
    import re

    first = {a for w in word_lists for a, _ in w["pairs"]}
    second = {b for w in word_lists for _, b in w["pairs"]}
    words = set(re.findall(r"[a-z][a-z'-]*", text.lower()))
    a, b = bool(words & (first - second)), bool(words & (second - first))
    return 0 if a and not b else 1 if b and not a else None


def _pairs(texts: list[str], word_list_names: list[str]) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    from probes.debias.cda import Swapper, load_word_list

    lists = [load_word_list(w) for w in word_list_names]
    swapper = Swapper(lists)
    originals, swapped = [], []
    for text in dict.fromkeys(texts):
        other = swapper.swap(text)
        if other != text:
            originals.append(text)
            swapped.append(other)
    if len(originals) < 4:
        raise DataError(f"Only {len(originals)} text(s) contain a word from the word lists; projection debiasing needs "
                        "at least 4 counterfactual pairs. Give --data with texts that name people by gendered words.")
    return originals, swapped, lists


def _representations(target: Any, texts: list[str], layer: int, pooling: str) -> np.ndarray:
    from probes.debias.projection import head_inputs

    if target.kind == "sequence-classification":
        return head_inputs(target, texts)
    return target.embed(texts, pooling=pooling, layer=layer).astype(np.float64)


def debias(technique: str, model: str | Path, out: str | Path, *, data: Any = None, word_lists: list[str] | None = None,
           seed: int = 0, overwrite: bool = False, n_components: int = 1, n_iterations: int = 20,
           constraints: str = "demographic_parity", epochs: int = 3, learning_rate: float = 2e-4,
           layer: int = -1, pooling: str = "mean") -> dict[str, Any]:
    """Apply ``technique`` to the model at ``model`` and write the debiased model to ``out``.

    ``data`` is an :class:`audit.data.AuditDataset` (texts; labels for ``cda`` and ``threshold``;
    one sensitive feature for ``threshold``). Returns the ``debiasing`` record section written.
    """
    from audit.target import load_target
    from probes.debias._model_dir import check_output_dir, copy_model_dir, write_record

    if technique not in TECHNIQUES:
        raise ConfigError(f"Unknown technique {technique!r}. Use one of {list(TECHNIQUES)}.")
    source = Path(model).expanduser()
    if not source.is_dir():
        raise ConfigError(f"--model {str(model)!r} is not a directory. Give a directory written by save_pretrained.")
    out_dir = check_output_dir(out, source=source, overwrite=overwrite)
    target = load_target(source, progress=False)
    if target.kind not in _KINDS[technique]:
        raise NotApplicableError(f"Technique {technique!r} does not apply to {target.model_id!r}, which is "
                                 f"{target.kind!r}; it needs {' or '.join(_KINDS[technique])}.")
    names = list(word_lists or ["gender_terms", "names"])
    section: dict[str, Any] = {"technique": technique, "seed": seed,
                               "data": ({"path": data.path, "fingerprint": data.fingerprint, "rows": len(data)}
                                        if data is not None else {"path": "built-in templates"})}
    if technique in ("cda", "threshold"):
        if data is None or data.label_column is None:
            raise DataError(f"Technique {technique!r} needs --data with a --label-column (class names or indices).")
        labels = _label_indices(target, data)
    if technique == "cda":
        from probes.debias.cda import CDAFineTuner

        tuner = CDAFineTuner(word_lists=names, epochs=epochs, learning_rate=learning_rate, seed=seed)
        tuner.fit(target, data.texts, labels)
        tuner.save_model(out_dir, target.tokenizer)
        section.update(parameters={"epochs": epochs, "learning_rate": learning_rate, "batch_size": tuner.batch_size,
                                   "max_length": tuner.max_length}, word_lists=tuner.word_lists_,
                       outcome={"original_rows": tuner.n_original_, "swapped_rows": tuner.n_swapped_,
                                "epoch_losses": tuner.losses_})
    elif technique == "threshold":
        from probes.debias.threshold import ThresholdPostprocessor

        if len(data.sensitive_features) != 1:
            raise DataError(f"Technique 'threshold' needs exactly one --sensitive-feature column, got "
                            f"{list(data.sensitive_features)}.")
        feature = data.sensitive_features[0]
        post = ThresholdPostprocessor(constraints=constraints, seed=seed)
        post.fit(target, data.texts, labels, sensitive_features=data.frame[feature].astype(str).tolist())
        copy_model_dir(source, out_dir)
        post.save_thresholds(out_dir)
        section.update(parameters={"constraints": constraints, "objective": post.objective,
                                   "sensitive_feature": feature}, word_lists=[], outcome=post.outcome_)
    else:
        from probes.debias.projection import INLP, SentenceDebias, fold_projection_into_head, save_projection

        texts = data.texts if data is not None else _builtin_sentences()
        originals, swapped, lists = _pairs(texts, names)
        a = _representations(target, originals, layer, pooling)
        b = _representations(target, swapped, layer, pooling)
        if technique == "sentence-debias":
            estimator: Any = SentenceDebias(n_components=n_components).fit(a, b)
            diff = a - b
            parameters = {"n_components": n_components}
            outcome = {"explained_variance_ratio": estimator.explained_variance_ratio_.tolist(),
                       "pair_difference_norm_before": float(np.linalg.norm(diff, axis=1).mean()),
                       "pair_difference_norm_after": float(np.linalg.norm(estimator.transform(diff), axis=1).mean())}
        else:
            sides = [_side(t, lists) for t in originals]
            keep = [i for i, s in enumerate(sides) if s is not None]
            X = np.concatenate([a[keep], b[keep]])
            y = np.array([sides[i] for i in keep] + [1 - sides[i] for i in keep])
            estimator = INLP(n_iterations=n_iterations, seed=seed).fit(X, y)
            parameters = {"n_iterations": n_iterations, "classifier": "logistic regression"}
            outcome = {"accuracies": estimator.accuracies_, "majority_rate": estimator.majority_rate_,
                       "directions_removed": int(estimator.directions_.shape[0])}
        if target.kind == "sequence-classification":
            fold_projection_into_head(target.model, estimator.projection_)  # target is our own fresh load
            target.model.save_pretrained(out_dir, safe_serialization=True)
            target.tokenizer.save_pretrained(out_dir)
            parameters["applied_as"] = "folded into the classification head (W P)"
        else:
            copy_model_dir(source, out_dir)
            save_projection(out_dir, estimator.projection_, technique=technique, layer=layer, pooling=pooling,
                            parameters=parameters)
            parameters.update(applied_as="projection file beside the model", layer=layer, pooling=pooling)
        section.update(parameters=parameters, outcome={**outcome, "pairs": len(originals)},
                       word_lists=[{"name": w["name"], "fingerprint": w["fingerprint"], "pairs": len(w["pairs"])}
                                   for w in lists])
    write_record(out_dir, target, section, texts=list(data.texts) if data is not None else None)
    return section


def _label_indices(target: Any, data: Any) -> np.ndarray:
    values = data.frame[data.label_column].tolist()
    names = target.labels
    out = []
    for v in values:
        if str(v) in names:
            out.append(names.index(str(v)))
        elif str(v).lstrip("-").isdigit() and 0 <= int(v) < len(names):
            out.append(int(v))
        else:
            raise DataError(f"Label {v!r} in column {data.label_column!r} is neither a class name of the model {names} "
                            f"nor a class index 0..{len(names) - 1}. Map the labels to the model's classes.")
    return np.asarray(out)


def rounded(value: Any, digits: int = 4) -> Any:
    """``value`` with every float rounded to ``digits`` significant digits, for the terminal
    (``0.03999999999999998`` prints as ``0.04``); the record keeps the exact values."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


class DebiasCommand:
    """Apply a debiasing technique and write a new model directory with its record."""

    name = "debias"
    help = "debias a model (cda, sentence-debias, inlp, threshold) into a new model directory"
    examples = (
        "rai-audit debias --technique sentence-debias --model encoder/ --out encoder-sd/",
        "rai-audit debias --technique threshold --model clf/ --data train.csv --label-column label --sensitive-feature gender --out clf-thr/",
    )

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Write a debiased copy of a model (safetensors, tokenizer, rai_audit_record.json with a 'debiasing' "
            "section). cda and threshold need a sequence classifier and --data with labels (threshold also one "
            "--sensitive-feature); sentence-debias and inlp apply to encoders (projection saved beside the model) "
            "and classifiers (projection folded into the head), fitted on --data texts or built-in sentences."
        )
        parser.add_argument("--technique", required=True, choices=TECHNIQUES, help="debiasing technique (see the README's table)")
        parser.add_argument("--model", required=True, help="model directory written by save_pretrained")
        parser.add_argument("--data", type=Path, help="data (CSV, JSONL, Parquet or saved HF dataset)")
        parser.add_argument("--text-column", default="text", help="column of --data holding the texts")
        parser.add_argument("--label-column", help="column of --data holding the labels (cda, threshold)")
        parser.add_argument("--sensitive-feature", action="append", dest="sensitive_features", metavar="COLUMN",
                            help="column of --data holding the protected attribute (threshold; repeatable)")
        parser.add_argument("--word-list", action="append", dest="word_lists", metavar="NAME_OR_JSON",
                            help="built-in list (gender_terms, names) or a JSON file with pairs; repeatable")
        parser.add_argument("--out", required=True, type=Path, help="new directory for the debiased model")
        parser.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
        parser.add_argument("--seed", type=seed_arg, default=0, help="seed for every random choice")
        parser.add_argument("--n-components", type=int, default=1, help="sentence-debias: bias subspace dimension")
        parser.add_argument("--n-iterations", type=int, default=20, help="inlp: most classifiers to project out")
        parser.add_argument("--constraints", default="demographic_parity",
                            choices=["demographic_parity", "equalized_odds", "true_positive_rate_parity",
                                     "false_positive_rate_parity"], help="threshold: fairlearn constraint")
        parser.add_argument("--epochs", type=int, default=3, help="cda: fine-tuning epochs")
        parser.add_argument("--learning-rate", type=float, default=2e-4, help="cda: AdamW learning rate")
        parser.add_argument("--layer", type=int, default=-1, help="encoders: hidden-state layer to project")
        parser.add_argument("--pooling", default="mean", choices=["mean", "cls", "last"],
                            help="how token states become a sentence embedding (sentence-debias, inlp)")

    def run(self, args: argparse.Namespace) -> int:
        from audit.data import load_dataset

        if args.word_lists:
            from probes.debias.cda import load_word_list

            for name in args.word_lists:
                load_word_list(name)  # a missing list fails before anything is loaded or written
        data = None
        if args.data is not None:
            data = load_dataset(args.data, text_column=args.text_column, label_column=args.label_column,
                                sensitive_features=args.sensitive_features or [])
        section = debias(args.technique, args.model, args.out, data=data, word_lists=args.word_lists, seed=args.seed,
                         overwrite=args.overwrite, n_components=args.n_components, n_iterations=args.n_iterations,
                         constraints=args.constraints, epochs=args.epochs, learning_rate=args.learning_rate,
                         layer=args.layer, pooling=args.pooling)
        print(f"Debiased with {args.technique}: {json.dumps(rounded(section['outcome']))}")
        print(f"Model and record: {args.out}")
        return 0
