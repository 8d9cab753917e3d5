"""The Kubernetes manifests tell Prometheus where each long-running pod serves /metrics."""

from __future__ import annotations

import os

import pytest

from tests.unit.deploy.manifests import SETTINGS, container_environment, pod_template, workloads
from tibridge.common.settings import ENV_PREFIX, load_settings

SCRAPED = ("scorer", "publisher")
SECRET_STUB = "from-a-kubernetes-secret"


@pytest.mark.parametrize("service", SCRAPED)
def test_deployments_are_annotated_for_scraping_the_health_port(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    template = pod_template(workloads()[service])
    (container,) = template["spec"]["containers"]
    for name in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in container_environment(container, SECRET_STUB).items():
        monkeypatch.setenv(name, value)
    settings = load_settings(SETTINGS[service])
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == settings.health.port
    assert settings.health.metrics
    assert settings.health.port in {port["containerPort"] for port in container["ports"]}


def test_the_collector_job_is_not_scraped_it_has_no_health_server() -> None:
    template = pod_template(workloads()["collector"])
    (container,) = template["spec"]["containers"]
    environment = {item["name"]: item.get("value") for item in container.get("env", [])}
    assert environment["TIBRIDGE_HEALTH_PORT"] == "0"
    assert "prometheus.io/scrape" not in template["metadata"].get("annotations", {})
