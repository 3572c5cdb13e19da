"""Offline test environment and tiny model fixtures shared by every test module."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_HF_HOME = tempfile.mkdtemp(prefix="rai-audit-hf-home-")
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HOME": _HF_HOME,
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "MPLBACKEND": "Agg",
    # the secret key for keyed data fingerprints and sealed canaries: never the developer's own
    "RAI_AUDIT_KEY_FILE": os.path.join(_HF_HOME, "rai-audit-secret.key"),
}.items():
    os.environ[_key] = _value

import pytest  # noqa: E402

from tests.tiny import make_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RAI_AUDIT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved tiny model per kind: encoder, masked-lm, causal-lm, sequence-classification, seq2seq (T5)."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {kind: make_tiny_model(kind, root / kind)
            for kind in ("encoder", "masked-lm", "causal-lm", "sequence-classification", "seq2seq")}


@pytest.fixture(scope="session")
def tiny_targets(tiny_dirs: dict[str, Path]):
    from audit import load_target

    return {kind: load_target(path, progress=False, device="cpu") for kind, path in tiny_dirs.items()}


@pytest.fixture(scope="session")
def minilm():
    from audit import load_target

    return load_target(progress=False, device="cpu")


@pytest.fixture(scope="session")
def plain_presidio():
    """Presidio as its documentation sets it up with the default spaCy model; nothing of ours."""
    import logging

    from privacy.pii import SPACY_MODEL, spacy_model_available

    if not spacy_model_available():
        pytest.skip(f"spaCy model {SPACY_MODEL} is not installed")
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    configuration = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": SPACY_MODEL}]}
    return AnalyzerEngine(nlp_engine=NlpEngineProvider(nlp_configuration=configuration).create_engine(),
                          supported_languages=["en"])
