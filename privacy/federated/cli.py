"""The ``rai-audit federate`` command: federated fine-tuning with Flower from the command line.

Registered in the ``rai_audit.commands`` entry-point group; the core CLI knows it only from there.
Importing this module imports neither Flower nor torch, so ``rai-audit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from audit._validate import check_max_length, device_arg, seed_arg
from audit.cli import BASELINE_MEANS, DeprecatedForm

__all__ = ["FederateCommand"]

EXIT_FAILED = 1  # the run degraded or failed (README: 2 is for usage errors only)
OUT_IS_MODEL = ("Output directory {out!r} is the input model (--model); trainers never change the model they were "
                "given. Choose another --out.")
OUT_IS_FILE = "Output path {out!r} is a file. Choose a directory with --out."
OUT_NOT_EMPTY = "Output directory {out!r} is not empty. Choose a new --out or pass --overwrite."


def _whole_number(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    return number


class FederateCommand:
    """Fine-tune a classifier across simulated or real clients and save it with its federated record."""

    name = "federate"
    help = "fine-tune a classifier with federated learning (Flower: FedAvg/FedProx, simulation or deployment)"
    examples = (
        "rai-audit federate --model clf/ --data train.csv --num-clients 5 --num-rounds 3 --out model-fed",
        "rai-audit federate --model clf/ --data train.csv --partition dirichlet:0.5 --strategy fedprox --mu 0.01 --sensitive-feature sex --out model-fed",
        "rai-audit federate --model clf/ --data labels.csv --engine deployment --superlink link.example:9093 --root-certificates ca.pem --num-clients 3 --min-nodes 2 --out model-fed",
    )

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Split the data into clients (IID, Dirichlet non-IID by label, or by a sensitive attribute), fine-tune "
            "the model with Flower's FedAvg or FedProx, and write a new model directory (safetensors) with "
            "rai_audit_record.json, whose 'federated' section 'rai-audit run' shows in the model card: accuracy per "
            "round, every client's accuracy and fairness gaps, the best-worst client gap and failures."
        )
        parser.add_argument("--model", required=True, help="model directory written by save_pretrained")
        parser.add_argument("--data", required=True, type=Path, help="labelled data (CSV, JSONL, Parquet or saved HF dataset)")
        parser.add_argument("--text-column", default="text", help="column of --data holding the texts")
        parser.add_argument("--label-column", default="label", help="column of --data holding the labels")
        parser.add_argument("--sensitive-feature", action="append", dest="sensitive_features", metavar="COLUMN",
                            help="column naming each row's group; per-client fairness gaps are recorded (repeatable)")
        parser.add_argument("--pos-label", help="positive class for selection rates (binary; default: second label)")
        parser.add_argument("--num-clients", type=_whole_number, default=5, help="number of clients (sites)")
        parser.add_argument("--num-rounds", type=_whole_number, default=3, help="federated rounds")
        parser.add_argument("--partition", default="iid", metavar="SPEC",
                            help="iid, dirichlet:ALPHA (non-IID by label, e.g. dirichlet:0.5) or by:COLUMN")
        parser.add_argument("--strategy", choices=["fedavg", "fedprox"], default="fedavg", help="Flower aggregation strategy")
        parser.add_argument("--mu", type=float, dest="proximal_mu",
                            help="FedProx proximal weight mu (default 0.01; fedprox only)")
        parser.add_argument("--fraction-train", type=float, default=1.0, help="share of clients that train each round")
        parser.add_argument("--min-completed", type=float, default=0.5, dest="min_completed_fraction",
                            help="share of sampled clients that must finish for a round to count")
        parser.add_argument("--min-nodes", type=_whole_number, default=None,
                            help="fewest clients a round needs (connected, then finished); rounds below it are "
                                 "recorded as failed (default: a majority of --num-clients)")
        parser.add_argument("--local-epochs", type=_whole_number, default=1, help="epochs each client trains per round")
        parser.add_argument("--batch-size", type=_whole_number, default=16, help="client training batch size")
        parser.add_argument("--learning-rate", type=float, default=5e-5, help="client optimiser learning rate")
        parser.add_argument("--max-length", type=_whole_number, default=128, help="truncation length in tokens")
        parser.add_argument("--eval-fraction", type=float, default=0.2, help="held-out share of each client's rows")
        parser.add_argument("--centralized-baseline", action="store_true", dest="baseline",
                            help="also train centrally on the same rows and epochs to report what federation cost")
        parser.add_argument("--baseline", action=DeprecatedForm, dest="baseline", default=None,
                            new="--centralized-baseline", reason=BASELINE_MEANS,
                            help="deprecated spelling of --centralized-baseline")
        parser.add_argument("--target-epsilon", type=float, help="client-side DP-SGD with this epsilon per client (fedavg)")
        parser.add_argument("--target-delta", type=float, help="DP delta with --target-epsilon (default: a power of ten at most 1/(10 N))")
        parser.add_argument("--max-grad-norm", type=float, default=1.0, help="per-example clipping norm with --target-epsilon")
        parser.add_argument("--central-dp", choices=["server", "client"],
                            help="client-level central DP with Flower's fixed-clipping wrapper: the server clips each "
                                 "update (server) or each client clips its own (client); Gaussian noise on the mean")
        parser.add_argument("--central-noise", type=float, dest="central_noise_multiplier",
                            help="with --central-dp: noise multiplier z (noise std z * clip / clients per round)")
        parser.add_argument("--central-clip", type=float, dest="central_clipping_norm",
                            help="with --central-dp: L2 clipping norm of each client's update")
        parser.add_argument("--local-dp-epsilon", type=float,
                            help="local DP with Flower's LocalDpMod: each client noises its clipped update for this "
                                 "epsilon (at most 1) per round, against the server too")
        parser.add_argument("--local-dp-clip", type=float, help="with --local-dp-epsilon: L2 clipping norm of each update")
        parser.add_argument("--record-private-stats", action="store_true",
                            help="with --target-epsilon, also send and record the clients' training loss, which is "
                                 "computed on their private rows without DP (off: not sent)")
        parser.add_argument("--engine", choices=["simulation", "deployment"], default="simulation",
                            help="simulation: Flower's run_simulation on Ray; deployment: SuperLink + SuperNodes + flwr run")
        parser.add_argument("--superlink", metavar="HOST:PORT",
                            help="deployment: a running SuperLink with its SuperNodes (default: start them on 127.0.0.1)")
        parser.add_argument("--root-certificates", type=Path, metavar="PEM",
                            help="deployment with --superlink: CA certificate of the SuperLink's TLS certificate; "
                                 "the connection then uses TLS (without it: insecure)")
        parser.add_argument("--round-timeout", type=float, default=600.0,
                            help="seconds each phase of a round waits (for --min-nodes clients to connect, for their "
                                 "replies); the round goes on with the clients that answered")
        parser.add_argument("--timeout", type=float, dest="deployment_timeout",
                            help="deployment: seconds for the whole run, then it is stopped and the finished rounds "
                                 "kept (default: (3 x rounds + 1) x --round-timeout + 300)")
        parser.add_argument("--num-cpus", type=_whole_number, help="simulation: CPUs Ray may use")
        parser.add_argument("--seed", type=seed_arg, default=0, help="seed for partitioning, sampling and initialisation")
        parser.add_argument("--device", type=device_arg, default="auto",
                            help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps, for every client")
        parser.add_argument("--out", required=True, type=Path, help="new directory for the federated model")
        parser.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
        parser.add_argument("--no-progress", action="store_true", help="no per-round progress lines")

    def run(self, args: argparse.Namespace) -> int:
        from audit.errors import OutputError
        from privacy.federated.trainer import FederatedFineTuner

        out = Path(args.out)
        if out.exists() and out.resolve() == Path(args.model).expanduser().resolve():
            raise OutputError(OUT_IS_MODEL.format(out=str(out)))
        if out.exists() and not out.is_dir():
            raise OutputError(OUT_IS_FILE.format(out=str(out)))
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise OutputError(OUT_NOT_EMPTY.format(out=str(out)))
        check_max_length(Path(args.model), args.max_length)
        tuner = FederatedFineTuner(
            num_clients=args.num_clients, num_rounds=args.num_rounds, partition=args.partition,
            strategy=args.strategy, proximal_mu=args.proximal_mu, fraction_train=args.fraction_train,
            min_completed_fraction=args.min_completed_fraction, min_nodes=args.min_nodes,
            local_epochs=args.local_epochs, record_private_stats=args.record_private_stats,
            central_dp=args.central_dp, central_noise_multiplier=args.central_noise_multiplier,
            central_clipping_norm=args.central_clipping_norm, local_dp_epsilon=args.local_dp_epsilon,
            local_dp_clip=args.local_dp_clip,
            root_certificates=args.root_certificates,
            batch_size=args.batch_size, learning_rate=args.learning_rate, max_length=args.max_length,
            eval_fraction=args.eval_fraction, text_column=args.text_column, label_column=args.label_column,
            sensitive_features=args.sensitive_features, pos_label=args.pos_label,
            target_epsilon=args.target_epsilon, target_delta=args.target_delta, max_grad_norm=args.max_grad_norm,
            engine=args.engine, superlink=args.superlink, round_timeout=args.round_timeout, baseline=args.baseline,
            seed=args.seed, device=args.device, num_cpus=args.num_cpus, progress=not args.no_progress,
            deployment_timeout=args.deployment_timeout,
        )
        from privacy.federated.runner import FederationError

        try:
            tuner.fit(args.model, args.data)
        except FederationError as exc:  # the federation ran and failed: not a usage error (exit 1, not 2)
            sys.stderr.write(f"rai-audit: error: {str(exc).splitlines()[0]}\n")
            return EXIT_FAILED
        saved = tuner.save(out, overwrite=args.overwrite)
        record = tuner.record_
        final = record["final"]["accuracy"]
        line = (f"Federated {record['strategy']} over {record['num_clients']} clients, "
                f"{record['rounds_aggregated']}/{record['num_rounds']} rounds aggregated")
        if isinstance(final, float):
            line += f"; held-out accuracy {final:.4f}"
        if record.get("centralized"):
            line += f" (centralized {record['centralized']['accuracy']:.4f})"
        print(line + ".")
        gap = record.get("best_worst_gap")
        if gap:
            print(f"Best-served client {gap['best_client']} ({gap['best']:.4f}), worst {gap['worst_client']} "
                  f"({gap['worst']:.4f}): gap {gap['gap']:.4f}.")
        if record["failures"]:
            print(f"Client failures: {len(record['failures'])} (see the record).")
        dp = record.get("client_dp")
        if dp and isinstance(dp.get("epsilon_max"), float):
            print(f"Client-side DP: epsilon at most {dp['epsilon_max']:.3f} for any one client's rows "
                  f"(client {dp.get('epsilon_max_client')}), delta {dp.get('delta'):.1e}; epsilons are per client, "
                  "never summed.")
        central = record.get("central_dp")
        if central:
            print(f"Central DP ({central['side']}-side clipping): epsilon {central['epsilon']:.3f}, delta "
                  f"{central['delta']:.1e} for everything one client contributed, over "
                  f"{len(central['rounds_released'])} released round(s).")
        local = record.get("local_dp")
        if local and isinstance(local.get("epsilon_max"), float):
            print(f"Local DP: epsilon {local['epsilon_per_round']:.3f} per client per round; at most "
                  f"{local['epsilon_max']:.3f} (delta {local['delta']:.1e}) for any one client over its rounds.")
        print(f"Model and federated record: {saved}")
        for warning in record.get("warnings") or []:
            sys.stderr.write(f"rai-audit: warning: {warning}.\n")
        if record.get("logs"):
            sys.stderr.write(f"rai-audit: logs of the deployment kept in {record['logs']}\n")
        if not record.get("complete"):
            sys.stderr.write(f"rai-audit: federate: incomplete run (model from round {record.get('model_round')}); "
                             "exit code 1\n")
            return EXIT_FAILED
        return 0
