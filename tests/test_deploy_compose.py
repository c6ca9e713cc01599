"""The deployment files: docker-compose.yml validated by the compose CLI, the vLLM command kept in
step with its workload profile, Kubernetes manifests schema-checked (kubernetes-validate, offline),
and the Grafana/Alertmanager/OTel files well-formed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.profiles import load_profile

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SECRETS = {
    "HF_TOKEN": "hf_test",
    "POSTGRES_PASSWORD": "pw",
    "GPULEDGER_ADMIN_TOKEN": "admin-test",
    "GPULEDGER_SIDECAR_TOKEN": "sidecar-test",
    "GRAFANA_ADMIN_PASSWORD": "grafana-test",
}


def _compose_cmd() -> list[str] | None:
    """`docker compose` (v2 plugin) if it works, else Debian's `docker-compose`; neither needs an
    engine for `config`."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


COMPOSE = _compose_cmd()
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="no compose CLI: apt-get install docker-compose (CI installs it)"
)


def _env(**overrides: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    env.update(SECRETS)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert COMPOSE is not None
    return subprocess.run(
        [*COMPOSE, "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )


@needs_compose
def test_compose_config_is_valid() -> None:
    res = _compose("config", "-q", env=_env())
    assert res.returncode == 0, res.stderr


@needs_compose
def test_compose_refuses_missing_secret() -> None:
    res = _compose("config", "-q", env=_env(POSTGRES_PASSWORD=None))
    assert res.returncode != 0
    assert "POSTGRES_PASSWORD" in res.stderr


@needs_compose
def test_resolved_stack() -> None:
    res = _compose("config", env=_env())
    assert res.returncode == 0, res.stderr
    services: dict[str, Any] = yaml.safe_load(res.stdout)["services"]
    assert {
        "vllm",
        "sidecar",
        "control-plane",
        "migrate",
        "postgres",
        "redis",
        "prometheus",
        "alertmanager",
        "grafana",
        "dashboard",
        "otel-collector",
    } <= set(services)
    # Every long-running service has a health check (the collector's image has no shell).
    for name, svc in services.items():
        if name not in {"migrate", "otel-collector"}:
            assert "healthcheck" in svc, name
    cp_deps = services["control-plane"]["depends_on"]
    assert cp_deps["migrate"]["condition"] == "service_completed_successfully"
    sidecar = services["sidecar"]
    assert sidecar["depends_on"]["vllm"]["condition"] == "service_healthy"
    assert "/ready" in " ".join(sidecar["healthcheck"]["test"])
    assert sidecar["environment"]["GPULEDGER_CONTROL_PLANE_TOKEN"] == "sidecar-test"
    gpu = services["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]


def test_vllm_command_is_rendered_from_profile() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    profile = load_profile("llama-3.1-8b-h100")
    expected = profile.vllm_args(profile.model, "0.0.0.0", 8000)
    tracing = ["--otlp-traces-endpoint", "grpc://otel-collector:4317"]
    assert [str(a) for a in compose["services"]["vllm"]["command"]] == expected + tracing


def test_mounted_files_exist() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for svc in compose["services"].values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


def _k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_k8s_manifests_validate_against_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    docs = _k8s_docs()
    assert {d["kind"] for d in docs} >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "HorizontalPodAutoscaler",
    }
    for doc in docs:
        kv.validate(doc, "1.30", strict=True)


def test_k8s_probes_and_hpa() -> None:
    by_kind = {d["kind"]: d for d in _k8s_docs()}
    container = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    hpa = by_kind["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == by_kind["Deployment"]["metadata"]["name"]
    metric = hpa["metrics"][0]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "gpuledger_engine_requests_waiting"


def test_grafana_dashboard_queries_known_series() -> None:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "gpuledger-overview.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    recorded = {
        r["record"]
        for g in yaml.safe_load(
            (DEPLOY / "prometheus" / "rules" / "gpuledger-recording.yml").read_text()
        )["groups"]
        for r in g["rules"]
    }
    for expr in exprs:
        names = [
            w for w in expr.replace("(", " ").replace("{", " ").split() if w.startswith("gpuledger")
        ]
        assert names, expr
        for name in names:
            assert name.startswith("gpuledger_") or name in recorded, name
    ds = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert ds["datasources"][0]["uid"] == dash["panels"][0]["datasource"]["uid"]


@pytest.mark.skipif(
    shutil.which("amtool") is None, reason="amtool missing: apt-get install prometheus-alertmanager"
)
def test_alertmanager_config() -> None:
    res = subprocess.run(
        ["amtool", "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_otel_collector_pipeline() -> None:
    cfg = yaml.safe_load((DEPLOY / "otel" / "collector.yml").read_text())
    traces = cfg["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"]
    for exporter in traces["exporters"]:
        assert exporter in cfg["exporters"]
    assert cfg["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
