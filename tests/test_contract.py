"""One contract test over every registered probe, on a tiny model of every kind."""

from __future__ import annotations

import json

import pytest

from audit import AuditConfig, Auditor, ProbeResult
from audit.probe import KINDS, STATUSES, Probe
from audit.registry import discover_probes

SPECS = discover_probes()


def test_every_registered_probe_loads():
    broken = {name: spec.error.message for name, spec in SPECS.items() if spec.cls is None}
    assert not broken, broken


@pytest.mark.parametrize("name", sorted(SPECS))
def test_probe_class_contract(name):
    cls = SPECS[name].cls
    assert cls is not None and issubclass(cls, Probe)
    assert cls.name == name and name.isidentifier() and name == name.lower()
    assert cls.kinds and set(cls.kinds) <= set(KINDS)
    assert cls.description, f"{name} needs a one-line description for 'rai-audit probes'"
    assert cls.__doc__, f"{name} needs a numpydoc docstring"
    probe = cls()
    params = probe.get_params()
    json.dumps(params)
    assert type(probe)(**params).get_params() == params, "constructor must store its arguments unchanged"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_probe_runs_on_every_kind(name, kind, tiny_targets, tmp_path):
    target = tiny_targets[kind]
    fingerprint_before = target.fingerprint
    state_before = {k: v.clone() for k, v in list(target.model.state_dict().items())[:4]}
    results = Auditor(AuditConfig(select=[name], seed=1), cache_dir=tmp_path).run(target)
    (result,) = results.results
    assert isinstance(result, ProbeResult)
    assert result.probe == name and result.status in STATUSES
    cls = SPECS[name].cls
    if kind not in cls.kinds:
        assert result.status == "not_applicable"
    else:
        assert result.status != "errored", result.error
        assert result.summary and result.summary[-1] in ".)!"
        if result.headline is not None:
            assert result.headline in result.metrics
    roundtrip = ProbeResult.model_validate_json(result.model_dump_json())
    assert roundtrip == result
    json.dumps(results.model_dump(mode="json"), allow_nan=False)
    assert target.fingerprint == fingerprint_before
    for key, value in state_before.items():
        assert (target.model.state_dict()[key] == value).all(), f"{name} changed the model's weights"
