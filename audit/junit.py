"""JUnit XML: one test case per probe and per gate, so CI systems show audit failures natively."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from audit._io import write_text_atomic
from audit.results import AuditResults

__all__ = ["to_junit_xml", "write_junit"]


def to_junit_xml(results: AuditResults) -> str:
    """Render results in the common ``testsuites/testsuite/testcase`` layout read by Jenkins,
    GitLab and GitHub: probes in suite ``rai-audit.probes``, gates in ``rai-audit.gates``.

    Examples
    --------
    >>> from audit import AuditConfig, Auditor, load_target
    >>> from audit.junit import to_junit_xml
    >>> res = Auditor(AuditConfig(select=["seat"], probes={"seat": {"params": {"tests": ["weat6"]}}})).run(load_target(progress=False))
    >>> to_junit_xml(res).startswith('<?xml version="1.0" encoding="utf-8"?>')
    True
    """
    m = results.manifest
    root = ET.Element("testsuites", name=f"rai-audit {m.model_id}")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}

    def suite(name: str) -> ET.Element:
        return ET.SubElement(root, "testsuite", name=name, timestamp=m.started_at.split("+")[0],
                             hostname="localhost")

    def finish(element: ET.Element, counts: dict[str, int], time_s: float) -> None:
        for key, value in counts.items():
            element.set(key, str(value))
            totals[key] += value
        element.set("time", f"{time_s:.3f}")

    probes = suite("rai-audit.probes")
    props = ET.SubElement(probes, "properties")
    for key, value in (("model", m.model_id), ("fingerprint", m.fingerprint), ("seed", str(m.seed)),
                       ("rai-audit", m.rai_audit_version)):
        ET.SubElement(props, "property", name=key, value=value)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for r in results.results:
        case = ET.SubElement(probes, "testcase", classname="rai-audit.probes", name=r.probe, time=f"{r.duration_s:.3f}")
        counts["tests"] += 1
        if r.status == "failed":
            counts["failures"] += 1
            ET.SubElement(case, "failure", message=r.summary, type="ProbeFailed").text = r.summary
        elif r.status == "errored":
            counts["errors"] += 1
            err = ET.SubElement(case, "error", message=r.summary, type=r.error.type if r.error else "Error")
            err.text = r.error.traceback if r.error and r.error.traceback else r.summary
        elif r.status in ("skipped", "not_applicable"):
            counts["skipped"] += 1
            ET.SubElement(case, "skipped", message=r.summary)
        else:
            ET.SubElement(case, "system-out").text = f"{r.status}: {r.summary}"
    finish(probes, counts, sum(r.duration_s for r in results.results))

    gates = suite("rai-audit.gates")
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for g in results.gates:
        name = (f"{g.probe}.{g.metric} {g.bound} {g.threshold:g}" if g.kind == "threshold"
                else f"{g.probe}.{g.metric} no regression (tolerance {g.threshold:g})")
        case = ET.SubElement(gates, "testcase", classname="rai-audit.gates", name=name, time="0.000")
        counts["tests"] += 1
        if not g.passed:
            counts["failures"] += 1
            ET.SubElement(case, "failure", message=g.message, type="GateFailed").text = g.message
    for g in results.gates_not_checked:  # a configured gate that did not run is a skipped test, not a pass
        case = ET.SubElement(gates, "testcase", classname="rai-audit.gates",
                             name=f"{g.probe}.{g.metric} no regression (tolerance {g.threshold:g})", time="0.000")
        counts["tests"] += 1
        counts["skipped"] += 1
        ET.SubElement(case, "skipped", message=g.reason)
    finish(gates, counts, 0.0)
    for key in ("tests", "failures", "errors"):  # the common schema has no 'skipped' on testsuites
        root.set(key, str(totals[key]))
    root.set("time", f"{m.duration_s:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(results: AuditResults, path: str | os.PathLike[str]) -> Path:
    """Write the JUnit XML file atomically."""
    return write_text_atomic(path, to_junit_xml(results))
