"""Bad inputs, tried one by one: each must be one line on stderr and nothing half-written (issue 12).

Every command-line case runs ``rai-audit`` in a fresh process (``python -m audit.cli``), the way a
user meets it, against tiny models and files built in a temporary workspace. A case is clean when

- the exit code is 2 (the Python API: an :class:`~audit.errors.AuditError` is raised),
- stderr is exactly one line, starting ``rai-audit: error:``, with no traceback (the API: the
  message is one line),
- nothing in the workspace was created, changed or removed (every file is hashed before and
  after; the model directories are in the workspace, so a model that was overwritten shows).

The table goes into the "Bad inputs" section of ``benchmarks/RESULTS.md``; the rest of that file
is kept. The script exits 1 when any row is not clean.

Run: ``.venv/bin/python benchmarks/bad_inputs.py`` (about 5 minutes on 2 cores: each case pays
the command's start-up). ``--only SUBSTRING`` runs the matching cases and writes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # before site-packages: an installed package there is also called "benchmarks"

ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
    "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "", "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0",
    "FLWR_TELEMETRY_ENABLED": "0", "MPLBACKEND": "Agg", "NO_COLOR": "1",
}
os.environ.update(ENV)


@dataclass
class Case:
    surface: str
    what: str
    argv: list[str] | None = None
    call: Callable[[], Any] | None = None


@dataclass
class Outcome:
    case: Case
    code: str
    one_line: bool
    untouched: bool
    message: str
    seconds: float

    @property
    def clean(self) -> bool:
        return self.code in ("2", "raised") and self.one_line and self.untouched


# -- the workspace ------------------------------------------------------------------------------------
def build_workspace(root: Path) -> dict[str, Path]:
    from tests.tiny import make_tiny_model

    w = {"root": root}
    for kind, name in (("encoder", "encoder"), ("sequence-classification", "clf"), ("causal-lm", "gpt")):
        w[name] = make_tiny_model(kind, root / name)
    broken = {
        "no_config": lambda d: (d / "config.json").unlink(),
        "no_tokenizer": lambda d: [p.unlink() for p in d.iterdir() if p.name.startswith(("tokenizer", "vocab"))],
        "pickle_only": lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"),
        "empty_weights": lambda d: (d / "model.safetensors").write_bytes(b""),
        "truncated_weights": lambda d: (d / "model.safetensors").write_bytes(
            (d / "model.safetensors").read_bytes()[:1000]),
        "record_eps": lambda d: (d / "rai_audit_record.json").write_text(
            json.dumps({"dp": {"epsilon": "abc", "delta": 1e-5}})),
        "record_json": lambda d: (d / "rai_audit_record.json").write_text("{not json"),
        "record_rounds": lambda d: (d / "rai_audit_record.json").write_text(
            json.dumps({"federated": {"rounds": "three"}})),
        "bad_config_json": lambda d: (d / "config.json").write_text("{oops"),
    }
    for name, damage in broken.items():
        shutil.copytree(w["encoder"], root / name)
        damage(root / name)
        w[name] = root / name
    rows = "".join(f"good movie {i},1,f\nbad film {i},0,m\n" for i in range(12))
    files = {
        "train.csv": "text,label,g\n" + rows,
        "quote.csv": 'text,label\n"broken quote,1\nfine,0\n',
        "empty.csv": "",
        "notes.txt": "just text\n",
        "cheap.yaml": "probes:\n  seat:\n    params: {tests: [weat6], n_samples: 200, n_boot: 100}\n",
        "invalid.yaml": "probes: [unclosed\n",
        "unknown_key.yaml": "sed: 3\n",
        "bad_param.yaml": "probes:\n  seat:\n    params: {no_such_param: 1}\n",
        "gate_no_bound.yaml": "probes:\n  seat:\n    gates:\n      mean_abs_effect_size: {}\n",
        "not_json.json": "{this is not json",
        "v9.json": json.dumps({"schema_version": "9.0"}),
    }
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
        w[name] = root / name
    (root / "latin1.csv").write_bytes("text\ncaf\xe9 cr\xe8me\n".encode("latin-1"))
    w["latin1.csv"] = root / "latin1.csv"
    (root / "outdir").mkdir()
    w["outdir"] = root / "outdir"
    for name, technique_name in (("exp_dots.yaml", ".."), ("exp_slash.yaml", "a/b")):
        spec = {"baseline": str(w["clf"]), "out": str(root / "exp"),
                "techniques": [{"name": technique_name, "technique": "threshold"}]}
        (root / name).write_text(json.dumps(spec))
        w[name] = root / name
    spec = {"baseline": str(w["clf"]), "out": str(root / "exp"),
            "techniques": [{"name": "t", "technique": "magic"}]}
    (root / "exp_technique.yaml").write_text(json.dumps(spec))
    w["exp_technique.yaml"] = root / "exp_technique.yaml"
    (root / "exp_invalid.yaml").write_text("baseline: [\n")
    w["exp_invalid.yaml"] = root / "exp_invalid.yaml"
    for name, seed in (("res_a.json", 0), ("res_b.json", 1)):
        w[name] = _results_file(w["encoder"], root / name, seed)
    return w


def _results_file(model: Path, path: Path, seed: int) -> Path:
    from audit import AuditConfig, Auditor, load_target

    config = AuditConfig(seed=seed, select=["seat"],
                         probes={"seat": {"params": {"tests": ["weat6"], "n_samples": 100, "n_boot": 50}}})
    Auditor(config).run(load_target(model, progress=False, device="cpu")).save(path)
    return path


def snapshot(root: Path) -> dict[str, str]:
    state = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        state[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return state


# -- the cases ----------------------------------------------------------------------------------------
def cli_cases(w: dict[str, Path]) -> list[Case]:
    s = {k: str(v) for k, v in w.items()}
    out = str(w["root"] / "report")
    run = ["run", "--config", s["cheap.yaml"], "--probe", "seat", "--no-progress", "--out", out]
    data = ["--data", s["train.csv"], "--label-column", "label"]
    cases = [
        ("run", "--model path that does not exist", [*run, "--model", s["root"] + "/missing"]),
        ("run", "--model is a file", [*run, "--model", s["notes.txt"]]),
        ("run", "model directory without config.json", [*run, "--model", s["no_config"]]),
        ("run", "config.json that is not JSON", [*run, "--model", s["bad_config_json"]]),
        ("run", "model directory without tokenizer files", [*run, "--model", s["no_tokenizer"]]),
        ("run", "only pickle weights, no --allow-pickle", [*run, "--model", s["pickle_only"]]),
        ("run", "empty (0-byte) safetensors", [*run, "--model", s["empty_weights"]]),
        ("run", "truncated safetensors", [*run, "--model", s["truncated_weights"]]),
        ("run", "record: dp.epsilon is 'abc'", [*run, "--model", s["record_eps"]]),
        ("run", "record file is not JSON", [*run, "--model", s["record_json"]]),
        ("run", "record: federated.rounds is a string", [*run, "--model", s["record_rounds"]]),
        ("run", "--device cuda without a GPU", [*run, "--model", s["encoder"], "--device", "cuda"]),
        ("run", "--seed -1", [*run, "--model", s["encoder"], "--seed", "-1"]),
        ("run", "--seed 2**32", [*run, "--model", s["encoder"], "--seed", str(2**32)]),
        ("run", "--max-length above the model's 128 positions", [*run, "--model", s["encoder"], "--max-length", "4096"]),
        ("run", "--max-length 0", [*run, "--model", s["encoder"], "--max-length", "0"]),
        ("run", "--probe that is not registered", ["run", "--model", s["encoder"], "--probe", "no_such", "--out", out]),
        ("run", "same probe in --probe and --disable", [*run, "--model", s["encoder"], "--disable", "seat"]),
        ("run", "--config with invalid YAML", ["run", "--model", s["encoder"], "--config", s["invalid.yaml"], "--out", out]),
        ("run", "--config with an unknown key", ["run", "--model", s["encoder"], "--config", s["unknown_key.yaml"],
                                                "--out", out]),
        ("run", "--config with an unknown probe parameter", ["run", "--model", s["encoder"], "--config",
                                                             s["bad_param.yaml"], "--probe", "seat", "--out", out]),
        ("run", "--config gate without max/min/tolerance", ["run", "--model", s["encoder"], "--config",
                                                            s["gate_no_bound.yaml"], "--out", out]),
        ("run", "--data that does not exist", [*run, "--model", s["encoder"], "--data", s["root"] + "/no.csv"]),
        ("run", "--data with an unsupported suffix", [*run, "--model", s["encoder"], "--data", s["notes.txt"]]),
        ("run", "--data empty file", [*run, "--model", s["encoder"], "--data", s["empty.csv"]]),
        ("run", "--data CSV with a broken quote", [*run, "--model", s["encoder"], "--data", s["quote.csv"]]),
        ("run", "--data not UTF-8", [*run, "--model", s["encoder"], "--data", s["latin1.csv"]]),
        ("run", "--text-column not in the data", [*run, "--model", s["encoder"], *data, "--text-column", "nope"]),
        ("run", "--label-column without --data", [*run, "--model", s["encoder"], "--label-column", "label"]),
        ("run", "--out is a file", ["run", "--model", s["encoder"], "--config", s["cheap.yaml"], "--probe", "seat",
                                   "--out", s["notes.txt"]]),
        ("run", "--out is the model directory", ["run", "--model", s["encoder"], "--config", s["cheap.yaml"],
                                                "--probe", "seat", "--out", s["encoder"]]),
        ("run", "--out is another model's directory", ["run", "--model", s["encoder"], "--config", s["cheap.yaml"],
                                                      "--probe", "seat", "--out", s["gpt"]]),
        ("run", "--baseline that is not JSON", [*run, "--model", s["encoder"], "--baseline", s["not_json.json"]]),
        ("run", "--baseline of schema version 9", [*run, "--model", s["encoder"], "--baseline", s["v9.json"]]),
        ("run", "--junit is a directory", [*run, "--model", s["encoder"], "--junit", s["outdir"]]),
        ("report", "results file that is not JSON", ["report", s["not_json.json"], "--out", out]),
        ("schema", "--out is a directory", ["schema", "--out", s["outdir"]]),
        ("schema", "--out in a missing directory", ["schema", "--out", s["root"] + "/no/schema.json"]),
        ("redact", "CSV with a broken quote", ["redact", s["quote.csv"], "--out", s["root"] + "/r.csv",
                                              "--columns", "text", "--engine", "pattern"]),
        ("redact", "column not in the file", ["redact", s["train.csv"], "--out", s["root"] + "/r.csv",
                                             "--columns", "nope", "--engine", "pattern"]),
        ("redact", "--out in a missing directory", ["redact", s["train.csv"], "--out", s["root"] + "/no/r.csv",
                                                   "--columns", "text", "--engine", "pattern"]),
        ("redact", "--operator encrypt without a key", ["redact", s["train.csv"], "--out", s["root"] + "/r.csv",
                                                       "--columns", "text", "--operator", "encrypt", "--engine", "pattern"]),
        ("redact", "--salt shorter than 16 bytes", ["redact", s["train.csv"], "--out", s["root"] + "/r.csv",
                                                   "--columns", "text", "--operator", "hash", "--salt", "x",
                                                   "--engine", "pattern"]),
        ("scan-pii", "--json is a directory", ["scan-pii", s["train.csv"], "--columns", "text", "--engine", "pattern",
                                              "--json", s["outdir"]]),
        ("scan-pii", "--json in a missing directory", ["scan-pii", s["train.csv"], "--columns", "text",
                                                      "--engine", "pattern", "--json", s["root"] + "/no/s.json"]),
        ("scan-pii", "--json is the input file", ["scan-pii", s["train.csv"], "--columns", "text", "--engine",
                                                 "pattern", "--json", s["train.csv"]]),
        ("scan-pii", "--examples -1", ["scan-pii", s["train.csv"], "--columns", "text", "--engine", "pattern",
                                      "--examples", "-1"]),
        ("scan-pii", "file not UTF-8", ["scan-pii", s["latin1.csv"], "--columns", "text", "--engine", "pattern"]),
        ("train-dp", "--seed -1", ["train-dp", "--model", s["clf"], *data, "--out", s["root"] + "/dp", "--seed", "-1"]),
        ("train-dp", "--device cuda without a GPU", ["train-dp", "--model", s["clf"], *data, "--out", s["root"] + "/dp",
                                                    "--device", "cuda"]),
        ("train-dp", "--target-epsilon -1", ["train-dp", "--model", s["clf"], *data, "--out", s["root"] + "/dp",
                                            "--target-epsilon", "-1"]),
        ("train-dp", "--max-length above the model's 128 positions", ["train-dp", "--model", s["clf"], *data,
                                                                      "--out", s["root"] + "/dp", "--max-length",
                                                                      "100000"]),
        ("train-dp", "--out is the model directory", ["train-dp", "--model", s["clf"], *data, "--out", s["clf"]]),
        ("federate", "--num-clients 0", ["federate", "--model", s["clf"], *data, "--out", s["root"] + "/fl",
                                        "--num-clients", "0"]),
        ("federate", "--max-length above the model's 128 positions", ["federate", "--model", s["clf"], *data,
                                                                      "--out", s["root"] + "/fl", "--max-length",
                                                                      "100000"]),
        ("federate", "--seed -1", ["federate", "--model", s["clf"], *data, "--out", s["root"] + "/fl", "--seed", "-1"]),
        ("federate", "--device cuda:0 without a GPU", ["federate", "--model", s["clf"], *data, "--out",
                                                      s["root"] + "/fl", "--device", "cuda:0"]),
        ("debias", "threshold without --data", ["debias", "--technique", "threshold", "--model", s["clf"],
                                               "--out", s["root"] + "/db"]),
        ("debias", "--seed -1", ["debias", "--technique", "inlp", "--model", s["encoder"], "--out", s["root"] + "/db",
                                "--seed", "-1"]),
        ("debias", "--out is the model directory", ["debias", "--technique", "inlp", "--model", s["encoder"],
                                                   "--out", s["encoder"]]),
        ("compare", "results file that does not exist", ["compare", s["res_a.json"], s["root"] + "/no.json",
                                                        "--out", s["root"] + "/cmp"]),
        ("compare", "--alpha 2", ["compare", s["res_a.json"], s["res_b.json"], "--out", s["root"] + "/cmp",
                                 "--alpha", "2"]),
        ("experiment", "invalid YAML", ["experiment", s["exp_invalid.yaml"]]),
        ("experiment", "technique name '..'", ["experiment", s["exp_dots.yaml"]]),
        ("experiment", "technique name 'a/b'", ["experiment", s["exp_slash.yaml"]]),
        ("experiment", "unknown technique 'magic'", ["experiment", s["exp_technique.yaml"]]),
    ]
    return [Case(surface, what, argv=argv) for surface, what, argv in cases]


def api_cases(w: dict[str, Path]) -> list[Case]:
    from audit import AuditConfig, Auditor, AuditResults, load_dataset, load_target
    from audit.config import load_config
    from privacy.redact import PIIRedactor, redact_file

    target = load_target(w["encoder"], progress=False, device="cpu")
    cases = [
        ("load_target(max_length=0)", lambda: load_target(w["encoder"], max_length=0, progress=False)),
        ("load_target(max_length=-5)", lambda: load_target(w["encoder"], max_length=-5, progress=False)),
        ("load_target(batch_size='8')", lambda: load_target(w["encoder"], batch_size="8", progress=False)),
        ("load_target(max_length=4096) on 128 positions", lambda: load_target(w["encoder"], max_length=4096,
                                                                              progress=False)),
        ("load_target(device='cuda') without a GPU", lambda: load_target(w["encoder"], device="cuda", progress=False)),
        ("load_target(kind='bogus')", lambda: load_target(w["encoder"], kind="bogus", progress=False)),
        ("load_target of a missing path", lambda: load_target(w["root"] / "missing", progress=False)),
        ("Auditor.run(None)", lambda: Auditor(AuditConfig(select=["seat"])).run(None)),
        ("AuditConfig(seed=-1)", lambda: AuditConfig(seed=-1)),
        ("AuditConfig(bogus=1)", lambda: AuditConfig(bogus=1)),
        ("AuditConfig.model_validate({'batch_size': 0})", lambda: AuditConfig.model_validate({"batch_size": 0})),
        ("target.embed('abc')", lambda: target.embed("abc")),
        ("target.embed([1, 2])", lambda: target.embed([1, 2])),
        ("target.predict_proba on an encoder", lambda: target.predict_proba(["text"])),
        ("load_dataset of a missing file", lambda: load_dataset(w["root"] / "no.csv")),
        ("load_config of a missing file", lambda: load_config(w["root"] / "no.yaml")),
        ("AuditResults.load of a file that is not JSON", lambda: AuditResults.load(w["not_json.json"])),
        ("PIIRedactor(operator='bogus').fit()", lambda: PIIRedactor(operator="bogus", engine="pattern").fit()),
        ("redact_file(columns='text'): a str, not a list", lambda: redact_file(
            w["train.csv"], w["root"] / "r.csv", columns="text")),
    ]
    return [Case("Python API", what, call=call) for what, call in cases]


# -- running ------------------------------------------------------------------------------------------
def run_cli(case: Case, root: Path) -> tuple[str, str]:
    env = {**os.environ, **ENV, "HF_HOME": str(root.parent / "hf-home")}
    proc = subprocess.run([sys.executable, "-m", "audit.cli", *case.argv], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    return str(proc.returncode), proc.stderr


def run_api(case: Case) -> tuple[str, str]:
    from audit.errors import AuditError

    try:
        case.call()
    except AuditError as exc:
        return "raised", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # not clean: a raw error from the API
        return f"raw {type(exc).__name__}", f"{type(exc).__name__}: {exc}"
    return "returned", ""


def try_case(case: Case, root: Path) -> Outcome:
    before = snapshot(root)
    start = time.perf_counter()
    code, stderr = run_cli(case, root) if case.argv is not None else run_api(case)
    seconds = time.perf_counter() - start
    lines = [line for line in stderr.splitlines() if line.strip()]
    if case.argv is not None:
        one_line = len(lines) == 1 and lines[0].startswith("rai-audit: error: ") and "Traceback" not in stderr
    else:
        one_line = code == "raised" and len(lines) == 1
    message = lines[-1] if len(lines) == 1 else " / ".join(lines[-3:])
    return Outcome(case, code, one_line, snapshot(root) == before, message, seconds)


def _cell(text: str, root: Path, limit: int = 230) -> str:
    text = text.replace(str(root.parent), "$TMP").replace("rai-audit: error: ", "")
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("\n", " ")


def table(outcomes: list[Outcome], root: Path) -> str:
    clean = sum(o.clean for o in outcomes)
    cli = sum(o.case.argv is not None for o in outcomes)
    lines = [
        "## Bad inputs (`bad_inputs.py`)",
        "",
        f"{len(outcomes)} bad inputs ({cli} on the command line, each in a fresh `rai-audit` process; "
        f"{len(outcomes) - cli} through the Python API), against tiny models and files in a temporary workspace: "
        f"**{clean} of {len(outcomes)} clean**. Clean means exit code 2 (the API: an `AuditError` raised), exactly "
        "one line on stderr starting `rai-audit: error:` with no traceback (the API: a one-line message), and "
        "every file of the workspace, the model directories included, byte-for-byte as before (nothing created, "
        "changed or removed). `$TMP` stands for the workspace.",
        "",
        "| # | command | bad input | exit | one line | nothing written | message |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, o in enumerate(outcomes, start=1):
        lines.append(f"| {i} | {o.case.surface} | {_cell(o.case.what, root)} | {o.code} | "
                     f"{'yes' if o.one_line else '**no**'} | {'yes' if o.untouched else '**no**'} | "
                     f"{_cell(o.message, root)} |")
    return "\n".join(lines) + "\n"


def write_results(body: str) -> None:
    """Replace the "Bad inputs" section of RESULTS.md (its own markers, or a bare heading) and keep the rest."""
    from benchmarks._results import RESULTS, write_section

    if RESULTS.exists():
        text = RESULTS.read_text(encoding="utf-8")
        if "<!-- bench:bad-inputs start -->" not in text and "\n## Bad inputs" in text:
            before, rest = text.split("\n## Bad inputs", 1)
            cut = [i for i in (rest.find("\n## "), rest.find("\n<!-- bench:")) if i >= 0]
            RESULTS.write_text(before.rstrip() + "\n" + (rest[min(cut):] if cut else "\n"), encoding="utf-8")
    write_section("bad-inputs", body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only cases whose description contains this text; write nothing")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rai-bad-inputs-") as tmp:
        root = Path(tmp) / "work"
        root.mkdir()
        os.environ["HF_HOME"] = str(Path(tmp) / "hf-home")
        started = time.perf_counter()
        w = build_workspace(root)
        cases = cli_cases(w) + api_cases(w)
        if args.only:
            cases = [c for c in cases if args.only in c.what or args.only == c.surface]
        outcomes = []
        for i, case in enumerate(cases, start=1):
            outcome = try_case(case, root)
            outcomes.append(outcome)
            flag = "clean" if outcome.clean else "NOT CLEAN"
            print(f"[{i}/{len(cases)}] {flag:9} {case.surface}: {case.what} -> {outcome.code} "
                  f"({outcome.seconds:.1f}s) {_cell(outcome.message, root, 300)}", flush=True)
        body = table(outcomes, root)
        print(f"{sum(o.clean for o in outcomes)} of {len(outcomes)} clean in {time.perf_counter() - started:.0f} s")
        print(body)
        if not args.only:
            write_results(body)
    return 0 if all(o.clean for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
