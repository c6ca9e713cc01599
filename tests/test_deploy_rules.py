"""The Prometheus rules: valid, and every alert has a `promtool test rules` case that fires and
one that does not (Debian's `prometheus` package brings promtool)."""

from __future__ import annotations

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


def test_every_metric_in_the_code_is_documented() -> None:
    """docs/metrics.md lists every gpuledger_* metric any component registers."""
    import re

    doc = (ROOT / "docs" / "metrics.md").read_text()
    pattern = re.compile(r"[\"'](gpuledger_[a-z0-9_]+)[\"']")
    found: set[str] = set()
    for pkg in ("sidecar", "control_plane", "serving", "dashboard", "gpuledger"):
        for path in (ROOT / pkg).rglob("*.py"):
            found.update(pattern.findall(path.read_text()))
    assert found, "no metric names found"
    missing = sorted(name for name in found if name not in doc)
    assert missing == [], f"add to docs/metrics.md: {missing}"
