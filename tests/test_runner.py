"""The Auditor: plugin isolation, caching and resume, gates, ordering, config validation."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from audit import AuditConfig, Auditor, ConfigError, Metric, Probe, ProbeResult, load_config
from audit.config import validate_config
from audit.registry import discover_probes

CHEAP_SEAT = {"seat": {"params": {"tests": ["weat6"], "n_samples": 500, "n_boot": 200}}}


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    """Install a distribution with one broken-on-import and one raising-in-run probe."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "rai_fake_plugins.py").write_text(textwrap.dedent('''
        from audit.probe import Probe

        class Exploding(Probe):
            """Raises in run."""
            name = "exploding"
            description = "raises"
            def run(self, target, context):
                raise RuntimeError("boom from plugin")

        class Counting(Probe):
            """Counts runs in a file."""
            name = "counting"
            description = "counts"
            after = ("exploding",)
            def __init__(self, *, tally: str = "", value: float = 1.0):
                self.tally = tally
                self.value = value
            def run(self, target, context):
                with open(self.tally, "a") as f:
                    f.write("x")
                from audit.probe import Metric
                return self.result(status="passed", summary="Counted.", metrics={"value": Metric(value=self.value)},
                                   headline="value")

        class WrongName(Probe):
            """Declares a different name."""
            name = "something_else"
            def run(self, target, context):
                return self.result(status="passed", summary="x.")
    '''))
    dist = root / "rai_fake_plugins-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rai-fake-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""
        [rai_audit.probes]
        exploding = rai_fake_plugins:Exploding
        counting = rai_fake_plugins:Counting
        missing_module = rai_fake_does_not_exist:Probe
        wrong_name = rai_fake_plugins:WrongName
    """))
    monkeypatch.syspath_prepend(str(root))
    yield tmp_path
    sys.modules.pop("rai_fake_plugins", None)


def test_broken_plugins_are_errored_not_fatal(fake_plugins, tiny_targets):
    counter = fake_plugins / "count.txt"
    config = AuditConfig(select=["seat", "exploding", "counting", "missing_module", "wrong_name"],
                         probes={**CHEAP_SEAT, "counting": {"params": {"tally": str(counter)}}})
    results = Auditor(config).run(tiny_targets["encoder"])
    by_name = {r.probe: r for r in results.results}
    assert by_name["exploding"].status == "errored"
    assert "boom from plugin" in by_name["exploding"].error.message
    assert "RuntimeError" in by_name["exploding"].error.traceback
    assert by_name["missing_module"].status == "errored"
    assert "rai_fake_does_not_exist" in by_name["missing_module"].error.message
    assert by_name["wrong_name"].status == "errored" and "must equal Probe.name" in by_name["wrong_name"].error.message
    assert by_name["seat"].status in ("passed", "warned") and by_name["counting"].status == "passed"
    assert [r.probe for r in results.results].index("exploding") < [r.probe for r in results.results].index("counting")
    assert results.exit_code == 1


def test_disable_skips_loading(fake_plugins):
    specs = discover_probes(disabled=["missing_module"])
    assert "missing_module" not in specs and specs["exploding"].loaded


def test_autoload_can_be_switched_off(fake_plugins, monkeypatch):
    monkeypatch.setenv("RAI_AUDIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    specs = discover_probes()
    assert "seat" in specs and "exploding" not in specs


def test_cache_resumes_and_invalidates(fake_plugins, tiny_targets, tmp_path):
    counter = fake_plugins / "count.txt"
    cache = tmp_path / "cache"

    def run(value):
        config = AuditConfig(select=["counting"], probes={"counting": {"params": {"tally": str(counter), "value": value}}})
        return Auditor(config, cache_dir=cache).run(tiny_targets["encoder"]).results[0]

    first, second, third = run(1.0), run(1.0), run(2.0)
    assert counter.read_text() == "xx"  # the second run reused the cached result
    assert not first.cached and second.cached and not third.cached
    assert second.metrics == first.metrics and third.metrics["value"].value == 2.0


def test_errored_results_are_not_cached(fake_plugins, tiny_targets, tmp_path):
    cache = tmp_path / "cache"
    Auditor(AuditConfig(select=["exploding"]), cache_dir=cache).run(tiny_targets["encoder"])
    assert not list(cache.glob("*.json")) if cache.exists() else True


class GapProbe(Probe):
    """Reports a fixed gap."""

    name = "gap"
    description = "fixed gap"

    def __init__(self, *, gap: float = 0.1) -> None:
        self.gap = gap

    def run(self, target, context):
        return self.result(status="passed", summary="Fixed gap.", metrics={"gap": Metric(value=self.gap)}, headline="gap")


@pytest.mark.parametrize("gap, passed", [(0.05, True), (0.2, False)])
def test_gates(tiny_targets, gap, passed):
    config = AuditConfig(probes={"gap": {"gates": {"gap": {"max": 0.1}}}})
    results = Auditor(config, probes=[GapProbe(gap=gap)]).run(tiny_targets["encoder"])
    (outcome,) = results.gates
    assert outcome.passed is passed and outcome.value == gap
    assert results.results[0].status == ("passed" if passed else "failed")
    assert results.exit_code == (0 if passed else 1)


def test_gate_on_missing_metric_fails(tiny_targets):
    config = AuditConfig(probes={"gap": {"gates": {"nope": {"min": 0}}}})
    results = Auditor(config, probes=[GapProbe()]).run(tiny_targets["encoder"])
    assert not results.gates[0].passed and "was not produced" in results.gates[0].message


def test_not_applicable_and_skipped(tiny_targets):
    class ClassifierOnly(GapProbe):
        """Only for classifiers."""
        name = "clf_only"
        kinds = frozenset({"sequence-classification"})

    class NeedsData(GapProbe):
        """Needs data."""
        name = "needs_data"
        requires_data = True

    results = Auditor(probes=[ClassifierOnly(), NeedsData()]).run(tiny_targets["encoder"])
    assert [r.status for r in results.results] == ["not_applicable", "skipped"]
    assert results.exit_code == 0


def test_third_party_run_with_only_target(tiny_targets):
    class OldStyle(Probe):
        """run(target) only."""
        name = "old_style"

        def run(self, target):  # type: ignore[override]
            return self.result(status="passed", summary=f"Saw {target.kind}.")

    assert Auditor(probes=[OldStyle()]).run(tiny_targets["encoder"]).results[0].summary == "Saw encoder."


def test_seed_makes_results_reproducible(tiny_targets):
    config = AuditConfig(select=["seat"], seed=3, probes=CHEAP_SEAT)
    a = Auditor(config).run(tiny_targets["encoder"]).results[0]
    b = Auditor(config).run(tiny_targets["encoder"]).results[0]
    assert a.metrics == b.metrics


def test_manifest_is_traceable(tiny_targets):
    results = Auditor(AuditConfig(select=["seat"], seed=9, probes=CHEAP_SEAT)).run(tiny_targets["encoder"])
    m = results.manifest
    assert m.fingerprint == tiny_targets["encoder"].fingerprint and m.seed == 9
    assert m.library_versions["torch"].startswith("2.") and m.n_parameters > 0
    assert m.config["probes"]["seat"]["params"]["tests"] == ["weat6"]


@pytest.mark.parametrize("raw, message", [
    ({"probes": {"seat": {"parms": {}}}}, "unknown key 'probes.seat.parms'. Allowed keys here: ['enabled', 'gates', 'params']"),
    ({"sed": 1}, "unknown key 'sed'"),
    ({"seed": "abc"}, "key 'seed'"),
    ({"batch_size": 0}, "key 'batch_size'"),
    ({"probes": {"seat": {"gates": {"x": {}}}}}, "a gate needs 'max', 'min' or 'tolerance'"),
    ([1, 2], "top level must be a mapping"),
])
def test_config_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=None) as info:
        validate_config(raw, source="cfg")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_probe_and_parameter_fail_before_running(tiny_targets):
    with pytest.raises(ConfigError, match="Unknown probe 'nope'"):
        Auditor(AuditConfig(select=["nope"])).plan()
    with pytest.raises(ConfigError, match=r"Probe 'seat' has no parameter 'n_sample' \(probes.seat.params.n_sample\)"):
        Auditor(AuditConfig(probes={"seat": {"params": {"n_sample": 5}}})).plan()


def test_yaml_config_relative_data_path(tmp_path):
    (tmp_path / "d.csv").write_text("text\nhello\n")
    cfg = tmp_path / "audit.yaml"
    cfg.write_text("data:\n  path: d.csv\nprobes:\n  seat:\n    params: {n_samples: 10}\n")
    config = load_config(cfg)
    assert config.data.path == tmp_path / "d.csv" and config.probes["seat"].params == {"n_samples": 10}


def test_invalid_yaml(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("probes: [\n  seat\n")
    with pytest.raises(ConfigError, match="is not valid YAML at line"):
        load_config(cfg)


def test_results_json_roundtrip_and_schema(tiny_targets, tmp_path):
    import jsonschema

    from audit import AuditResults, json_schema

    results = Auditor(AuditConfig(select=["seat"], probes=CHEAP_SEAT)).run(tiny_targets["encoder"])
    path = results.save(tmp_path / "results.json")
    assert AuditResults.load(path) == results
    import json

    jsonschema.validate(json.loads(path.read_text()), json_schema())


def test_results_from_another_major_version_are_refused(tmp_path):
    from audit import AuditResults, DataError

    path = tmp_path / "r.json"
    path.write_text('{"schema_version": "9.0"}')
    with pytest.raises(DataError, match=r"schema version '9\.0'"):
        AuditResults.load(path)


def test_probe_result_rejects_nan():
    with pytest.raises(ValueError, match="not finite"):
        Metric(value=float("nan"))
    assert ProbeResult(probe="x", status="passed", summary="s.", examples=[{"a": float("nan")}]).examples == [{"a": None}]


class SecretProbe(GapProbe):
    """Takes a deny list that must not reach reports."""

    name = "secret"
    category = "privacy"
    sensitive_params = ("deny_list",)

    def __init__(self, *, gap: float = 0.1, deny_list: tuple[str, ...] = ()) -> None:
        self.gap = gap
        self.deny_list = deny_list


def test_sensitive_params_are_digested_everywhere(tiny_targets):
    import hashlib
    import json as _json

    secret = ("Project Nightingale",)
    config = AuditConfig(probes={"secret": {"params": {"deny_list": list(secret)}}})
    results = Auditor(config, probes=[SecretProbe(deny_list=secret)]).run(tiny_targets["encoder"])
    dumped = results.to_json()
    assert "Nightingale" not in dumped
    expected = "redacted sha256:" + hashlib.sha256(_json.dumps(list(secret), sort_keys=True).encode()).hexdigest()[:16]
    assert results.results[0].params["deny_list"] == expected
    assert results.manifest.config["probes"]["secret"]["params"]["deny_list"] == expected
    assert results.results[0].category == "privacy"
    other = SecretProbe(deny_list=("Project Kestrel",)).get_params()["deny_list"]
    assert other != expected  # a different value is a different cache key


def test_cache_misses_when_the_probe_code_changes_without_a_version_bump(fake_plugins, tiny_targets, tmp_path):
    """The key named the probe's version but not its code: an edited probe got its old results back."""
    import importlib

    import rai_fake_plugins

    from audit import runner

    cache, counter = tmp_path / "cache", tmp_path / "count.txt"
    config = AuditConfig(select=["counting"], probes={"counting": {"params": {"tally": str(counter)}}})
    Auditor(config, cache_dir=cache).run(tiny_targets["encoder"])
    source = Path(rai_fake_plugins.__file__)
    source.write_text(source.read_text().replace('summary="Counted."', 'summary="Counted again."'))
    importlib.reload(rai_fake_plugins)
    runner._digest_files.cache_clear()  # a new process reads the files afresh
    again = Auditor(config, cache_dir=cache).run(tiny_targets["encoder"]).results[0]
    assert not again.cached and again.summary == "Counted again." and counter.read_text() == "xx"


class FileProbe(GapProbe):
    """Reads a file named by a parameter: its content, not its path, decides the result."""

    name = "file_reader"

    def __init__(self, *, prompts_path: str = "", options: dict | None = None) -> None:
        self.prompts_path = prompts_path
        self.options = options

    def run(self, target, context):
        return self.result(status="passed", summary=f"Read {Path(self.prompts_path).read_text()}.")


def test_cache_misses_when_a_file_named_by_a_parameter_changes(tiny_targets, tmp_path):
    """The key held a NER model's path, not its files: replacing the model gave the old results."""
    source, cache = tmp_path / "input.txt", tmp_path / "cache"
    source.write_text("one")
    probe = FileProbe(prompts_path=str(source))
    first = Auditor(AuditConfig(), probes=[probe], cache_dir=cache).run(tiny_targets["encoder"]).results[0]
    same = Auditor(AuditConfig(), probes=[probe], cache_dir=cache).run(tiny_targets["encoder"]).results[0]
    source.write_text("two")
    changed = Auditor(AuditConfig(), probes=[probe], cache_dir=cache).run(tiny_targets["encoder"]).results[0]
    assert first.summary == "Read one." and same.cached
    assert not changed.cached and changed.summary == "Read two."


def test_input_digests_follow_path_parameters_at_any_depth(tmp_path):
    from audit.provenance import directory_digest, file_digest
    from audit.runner import input_digests

    (tmp_path / "ner").mkdir()
    (tmp_path / "ner" / "config.json").write_text("{}")
    terms = tmp_path / "terms.txt"
    terms.write_text("Kestrel\n")
    probe = FileProbe(prompts_path=str(terms), options={"ner_model": str(tmp_path / "ner"), "language": str(tmp_path),
                                                          "rules": [{"deny_list_file": str(terms)}]})
    assert input_digests(probe) == {"prompts_path": file_digest(terms), "options.ner_model": directory_digest(tmp_path / "ner"),
                                    "options.rules[0].deny_list_file": file_digest(terms)}
    before = input_digests(probe)["options.ner_model"]
    (tmp_path / "ner" / "model.safetensors").write_bytes(b"x")
    assert input_digests(probe)["options.ner_model"] != before
