"""The Hub card's results: ``model-index`` the Hub displays, ``.eval_results`` for declared benchmarks, metadata."""

from __future__ import annotations

import huggingface_hub
import pytest
import yaml
from huggingface_hub import ModelCard

from audit import AuditConfig, Auditor, load_target
from audit.config import validate_config
from audit.errors import ConfigError
from reports import write_reports
from tests.tiny import make_tiny_model

SEAT = {"params": {"tests": ["weat6"], "n_samples": 500, "n_boot": 100}}
CARD = {"base_model": "google-bert/bert-base-uncased", "pipeline_tag": "feature-extraction",
        "license": "apache-2.0", "datasets": ["stanfordnlp/imdb"], "language": ["en"],
        "benchmarks": {"seat": "example-org/seat-benchmark:weat6"}}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    make_tiny_model("encoder", root / "clf")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        target = load_target("./clf", progress=False)  # a local path, as on the command line
        config = validate_config({"select": ["seat"], "probes": {"seat": SEAT}, "card": CARD})
        results = Auditor(config).run(target)
    paths = write_reports(results, root / "report")
    return results, paths, root / "report"


def test_written_card_has_model_index_results_the_hub_reads(audited):
    results, _, out = audited
    card = ModelCard.load(out / "README.md", ignore_metadata_errors=False)
    (hub,) = card.data.eval_results
    seat = results.result("seat")
    assert hub.metric_type == seat.headline == "mean_abs_effect_size"
    assert hub.metric_value == pytest.approx(seat.headline_metric.value)
    assert hub.task_type == "feature-extraction" and hub.dataset_type == "example-org/seat-benchmark"
    assert hub.dataset_config == "weat6"
    low, high = seat.headline_metric.ci
    assert f"{low:.4g}" in hub.metric_name and f"{high:.4g}" in hub.metric_name


def test_config_metadata_reaches_the_card_and_name_is_not_a_path(audited):
    _, _, out = audited
    data = ModelCard.load(out / "README.md").data
    assert data.base_model == CARD["base_model"] and data.pipeline_tag == "feature-extraction"
    assert data.license == "apache-2.0" and data.datasets == ["stanfordnlp/imdb"] and data.language == ["en"]
    assert data.model_name == "clf"
    assert "./clf" not in (out / "README.md").read_text()


@pytest.mark.skipif(not hasattr(huggingface_hub, "EvalResultEntry"), reason="huggingface_hub without .eval_results")
def test_declared_benchmark_gets_an_eval_results_file(audited):
    results, paths, out = audited
    path = out / ".eval_results" / "rai-audit-seat.yaml"
    assert paths["eval_results:rai-audit-seat"] == path
    (entry,) = yaml.safe_load(path.read_text())
    assert entry["dataset"] == {"id": "example-org/seat-benchmark", "task_id": "weat6"}
    assert entry["value"] == pytest.approx(results.result("seat").headline_metric.value)
    assert "no `.eval_results/` files" not in (out / "README.md").read_text()


def test_undeclared_probe_gets_no_eval_results_file_and_the_card_says_so(audited):
    results, _, out = audited
    plain = results.model_copy(update={"card": {}})
    write_reports(plain, out)  # the same directory: the earlier benchmark file is not this audit's claim
    assert not list((out / ".eval_results").glob("*.yaml"))
    text = (out / "README.md").read_text()
    assert "no `.eval_results/` files: no probe's data is declared as a Hub benchmark" in text
    assert ModelCard.load(out / "README.md").data.eval_results[0].dataset_type == "rai-audit-seat"


def test_bundled_model_keeps_its_hub_id():
    from reports.markdown_card import hub_model_name

    config = AuditConfig(select=["seat"], probes={"seat": SEAT})
    results = Auditor(config).run(load_target(progress=False))
    assert hub_model_name(results) == "sentence-transformers/all-MiniLM-L6-v2"


def test_benchmark_must_be_a_hub_dataset_id():
    with pytest.raises(ConfigError, match=r"card\.benchmarks\.seat"):
        validate_config({"card": {"benchmarks": {"seat": "./my-data.csv"}}})
