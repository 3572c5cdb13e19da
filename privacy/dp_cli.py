"""The ``rai-audit train-dp`` command: DP-SGD fine-tuning from the command line.

Registered in the ``rai_audit.commands`` entry-point group; the core CLI knows it only from there.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from audit._validate import check_max_length, device_arg, seed_arg
from audit.cli import BASELINE_MEANS, DeprecatedForm
from audit.errors import ConfigError

__all__ = ["TrainDPCommand"]


def _trainable_layers(value: str) -> str | int | list[str]:
    if value in ("all", "head"):
        return value
    if value.isdigit():
        return int(value)
    prefixes = [p.strip() for p in value.split(",") if p.strip()]
    if not prefixes:
        raise argparse.ArgumentTypeError(f"expected 'all', 'head', a number or comma-separated prefixes, got {value!r}")
    return prefixes


def _repetitions(value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive counts such as 1,10,100, got {value!r}")
    return counts


class TrainDPCommand:
    """Fine-tune a model with DP-SGD and save it with its privacy record."""

    name = "train-dp"
    help = "fine-tune a model with differential privacy (DP-SGD, Opacus) and save it with its privacy record"
    examples = (
        "rai-audit train-dp --model clf/ --data train.csv --label-column label --target-epsilon 8 --out model-dp",
    )

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Fine-tune a Hugging Face model with DP-SGD under a hard privacy budget and write a new model "
            "directory (safetensors) with rai_audit_record.json, which 'rai-audit run' shows in the model card. "
            "With --label-column the model is trained as a sequence classifier; without it, as a causal LM."
        )
        parser.add_argument("--model", required=True, help="model directory written by save_pretrained")
        parser.add_argument("--data", required=True, type=Path, help="training data (CSV, JSONL, Parquet or saved HF dataset)")
        parser.add_argument("--text-column", default="text", help="column of --data holding the texts")
        parser.add_argument("--label-column", help="class column; omit to train a causal LM on the texts")
        parser.add_argument("--out", required=True, type=Path, help="new directory for the trained model")
        parser.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
        parser.add_argument("--target-epsilon", type=float, default=8.0, help="privacy budget (default 8)")
        parser.add_argument("--target-delta", type=float, help="default: a power of ten below 1/(10 N)")
        parser.add_argument("--max-grad-norm", type=float, default=1.0, help="per-example gradient clipping norm")
        parser.add_argument("--noise-multiplier", type=float, help="fix sigma instead of calibrating it to the budget")
        parser.add_argument("--epochs", type=int, default=3, help="passes over the data (the budget may stop training earlier)")
        parser.add_argument("--batch-size", type=int, default=64, help="expected logical batch size")
        parser.add_argument("--max-physical-batch-size", type=int, default=32, help="largest batch held in memory at once")
        parser.add_argument("--learning-rate", type=float, default=5e-4, help="optimiser learning rate")
        parser.add_argument("--accountant", choices=["prv", "rdp"], default="prv", help="privacy accountant")
        parser.add_argument("--grad-sample-mode", choices=["ghost", "hooks"], default="ghost",
                            help="ghost clipping, or per-example gradients through hooks")
        parser.add_argument("--trainable-layers", type=_trainable_layers, default="all", metavar="SPEC",
                            help="'all', 'head', N (head + top N blocks) or comma-separated parameter-name prefixes")
        parser.add_argument("--max-length", type=int, default=128, help="truncation length in tokens")
        parser.add_argument("--eval-fraction", type=float, default=0.2, help="held-out share for utility")
        parser.add_argument("--non-private-baseline", action="store_true", dest="baseline",
                            help="also train without DP to report the utility cost")
        parser.add_argument("--baseline", action=DeprecatedForm, dest="baseline", default=None,
                            new="--non-private-baseline", reason=BASELINE_MEANS,
                            help="deprecated spelling of --non-private-baseline")
        parser.add_argument("--canaries", type=_repetitions, default=(), metavar="R1,R2,...",
                            help="causal LMs: plant one random canary per count, repeated that often (e.g. 1,10,100)")
        parser.add_argument("--audit-canaries", type=int, default=0, metavar="M",
                            help="one-run empirical audit (Steinke, Nasr and Jagielski 2023): plant M random canaries, "
                                 "each trained on with probability 1/2, and record a 95%% lower bound on epsilon from "
                                 "guessing them (e.g. 1000; 0: no audit)")
        parser.add_argument("--secure-mode", action="store_true",
                            help="Opacus' secure mode; needs torchcsprng (refused when it is not installed). Without "
                                 "it the noise and sampling still come from OS entropy, never from --seed")
        parser.add_argument("--record-private-stats", action="store_true",
                            help="also record the training-loss curve, the non-private baseline's score and the "
                                 "empty-batch count, labelled as not covered by the DP guarantee")
        parser.add_argument("--seed", type=seed_arg, default=0,
                            help="fixes the data split, initialisation and dropout; never the DP noise or sampling")
        parser.add_argument("--device", type=device_arg, default="auto", help="auto, cpu, cuda, cuda:N or mps")
        parser.add_argument("--no-progress", action="store_true", help="no progress output")

    def run(self, args: argparse.Namespace) -> int:
        from audit.data import load_dataset
        from privacy.dp import DPFineTuner, _check_output_dir, _describe

        model_path = Path(args.model).expanduser()
        if not model_path.exists():
            raise ConfigError(f"--model {args.model!r} does not exist. Give a directory written by save_pretrained.")
        check_max_length(model_path, args.max_length)
        tuner = DPFineTuner(
            target_epsilon=args.target_epsilon, target_delta=args.target_delta, max_grad_norm=args.max_grad_norm,
            epochs=args.epochs, batch_size=args.batch_size, max_physical_batch_size=args.max_physical_batch_size,
            learning_rate=args.learning_rate, noise_multiplier=args.noise_multiplier, accountant=args.accountant,
            grad_sample_mode=args.grad_sample_mode, trainable_layers=args.trainable_layers,
            task="sequence-classification" if args.label_column else "causal-lm",
            text_column=args.text_column, label_column=args.label_column, max_length=args.max_length,
            eval_fraction=args.eval_fraction, baseline=args.baseline, canaries=args.canaries,
            audit_canaries=args.audit_canaries,
            secure_mode=args.secure_mode, record_private_stats=args.record_private_stats, seed=args.seed,
            device=args.device,
            progress=not args.no_progress,
        )
        tuner._validate_params()  # a bad option fails before any file is read or written
        _check_output_dir(args.out, overwrite=args.overwrite, source=model_path)
        from audit.records import secret_key

        secret_key(create=True)  # the record's keyed data digest needs it: fail before training, not after
        data = load_dataset(args.data, text_column=args.text_column, label_column=args.label_column)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tuner.fit(str(model_path), data)
        for warning in caught:
            if issubclass(warning.category, UserWarning):
                sys.stderr.write(f"rai-audit: warning: {warning.message}\n")
        out = tuner.save(args.out, overwrite=args.overwrite)
        record = tuner.record_
        print(f"Trained with DP-SGD: {_describe(record)}")
        print(_utility_line(record["utility"]))
        print(f"Model and privacy record: {out}")
        if record.get("audit"):
            print(_audit_line(record))
        if record.get("canaries"):
            from audit.records import key_file_path

            print(f"The canary secrets are sealed in the record with the key in {key_file_path()}: keep that file apart "
                  "from the model (anyone holding both can read them); the canary_exposure probe needs it.")
        return 0


def _audit_line(record: dict[str, Any]) -> str:
    audit = record["audit"]
    verdict = ("consistent with the accountant" if audit["consistent"] else
               "ABOVE the accountant's epsilon: the implementation does not deliver the claimed guarantee")
    return (f"One-run audit ({audit['guesser']['canaries']} canaries, {audit['guesser']['correct']} of "
            f"{audit['guesser']['guesses']} guesses right): epsilon >= {audit['epsilon_lower_bound']:.3f} at "
            f"{audit['confidence']:.0%} confidence vs accountant epsilon {record['epsilon']:.3f}, {verdict}. "
            "A low bound is no proof of privacy.")


def _utility_line(utility: dict[str, Any]) -> str:
    if utility["private"] is None:
        return "Utility: not measured (eval_fraction=0)."
    line = f"Held-out {utility['metric']} ({utility['rows']} rows): {utility['private']:.4f} with DP"
    if utility["non_private"] is not None:
        line += f", {utility['non_private']:.4f} without DP (not covered by the DP guarantee; not recorded by default)"
    return line + "."
