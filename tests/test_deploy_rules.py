"""The Prometheus rules: valid, and every alert has a `promtool test rules` case that fires and
one that does not (Debian's `prometheus` package brings promtool)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
TEST_FILES = sorted((PROM / "tests").glob("*.yml"))
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: apt-get install prometheus (CI installs it)"
)


def _rules() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(group["rules"])
    return out


def _alert_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for path in TEST_FILES:
        for test in yaml.safe_load(path.read_text())["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases


@needs_promtool
def test_promtool_check_rules() -> None:
    assert PROMTOOL is not None
    res = subprocess.run(
        [PROMTOOL, "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_promtool_test_rules() -> None:
    assert PROMTOOL is not None
    res = subprocess.run(
        [PROMTOOL, "test", "rules", *map(str, TEST_FILES)],
        capture_output=True,
        text=True,
        cwd=PROM / "tests",
    )
    assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_promtool_check_config() -> None:
    assert PROMTOOL is not None
    res = subprocess.run(
        [PROMTOOL, "check", "config", "--syntax-only", str(PROM / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_has_firing_and_quiet_cases() -> None:
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert len(alerts) >= 12
    cases = _alert_cases()
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert alerts - firing == set(), "alerts without a firing case"
    assert alerts - quiet == set(), "alerts without a not-firing case"


def test_rules_are_documented_and_labelled() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    for rule in _rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"info", "warning", "critical"}
            anchor = rule["annotations"]["runbook"].split("#")[1]
            assert anchor == rule["alert"].lower()
            assert f"### {rule['alert']}" in doc, f"{rule['alert']} missing from docs/metrics.md"
        else:
            assert rule["record"].startswith("gpuledger:")
            assert f"`{rule['record']}`" in doc, f"{rule['record']} missing from docs/metrics.md"


# A metric's name is the first argument of a prometheus_client metric or metric family; other
# `gpuledger_*` strings (a ContextVar's name, a logger) are not metrics. `{x}` in an f-string name
# (the engine-watch histograms) stands for any name part.
_METRIC_DEF = re.compile(
    r"(?:Counter|Gauge|Histogram|Summary|Info|Enum|MetricFamily)\(\s*f?[\"'](gpuledger_[a-z0-9_{}]+)[\"']"
)


def _names_in_code() -> set[str]:
    found: set[str] = set()
    for pkg in ("sidecar", "control_plane", "serving", "dashboard", "gpuledger"):
        for path in (ROOT / pkg).rglob("*.py"):
            found.update(_METRIC_DEF.findall(path.read_text()))
    return found


def test_every_metric_in_the_code_is_documented() -> None:
    """docs/metrics.md lists every gpuledger_* metric any component registers."""
    doc = (ROOT / "docs" / "metrics.md").read_text()
    found = _names_in_code()
    assert len(found) >= 40, f"metric definitions not recognised any more: {sorted(found)}"
    missing = []
    for name in sorted(found):
        # Counters may be declared with or without `_total`; the doc names the exposed series.
        pattern = re.escape(name.removesuffix("_total"))
        pattern = re.sub(r"\\\{[a-z_]+\\\}", "[a-z0-9_]+", pattern)
        if not re.search(rf"`{pattern}(_total)?`", doc):
            missing.append(name)
    assert missing == [], f"add to docs/metrics.md: {missing}"


def test_alert_rules_only_use_metrics_that_exist() -> None:
    """Every gpuledger_* series an alert or recording rule reads is defined in the code (or is an
    documented external input), so a renamed metric cannot leave an alert silently empty."""
    code = _names_in_code()
    known = {n.removesuffix("_total") for n in code}
    families = [re.compile(re.sub(r"\\\{[a-z_]+\\\}", "[a-z0-9_]+", re.escape(n))) for n in known]
    # Read by rules but exported by something outside this repo's Python (see docs/metrics.md).
    external = {"gpuledger_escalations"}
    used = set()
    for rule in _rules():
        used.update(re.findall(r"\b(gpuledger_[a-z0-9_]+)", rule["expr"]))
    unknown = []
    for name in sorted(used):
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        if base in known or base in external or any(f.fullmatch(base) for f in families):
            continue
        unknown.append(name)
    assert unknown == [], f"rules read metrics no component defines: {unknown}"
