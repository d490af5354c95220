"""deploy/k8s checked offline (issue 11 §6): valid against the Kubernetes OpenAPI schemas (strict), and
what an operator expects of it — Pod Security "restricted", probes on /livez and /readyz for every
process, migrations before any process runs, PDB and HPA for serve, a shutdown that fits the grace."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from escalation.config import VARIABLES
from tests.deploy.harness import BIN, DEPLOY, KUBERNETES_VERSION, load, load_all, run

K8S = DEPLOY / "k8s"
MANIFESTS = [K8S / "escalation.yaml", K8S / "migrate-job.yaml"]


def _resources() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in load_all(path)]


def _of(kind: str) -> list[dict[str, Any]]:
    return [r for r in _resources() if r["kind"] == kind]


def _deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _of("Deployment")}


def _config() -> dict[str, str]:
    (config_map,) = _of("ConfigMap")
    data: dict[str, str] = config_map["data"]
    return data


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: Path(p).name)
def test_kubernetes_validate_strict_passes(path: Path) -> None:
    result = run(BIN / "kubernetes-validate", "--strict", "-k", KUBERNETES_VERSION, path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout


def test_kubernetes_validate_strict_refuses_an_unknown_field(tmp_path: Path) -> None:
    """The check can fail: a misspelt field is an error, not ignored."""
    bad = tmp_path / "bad.yaml"
    bad.write_text((K8S / "escalation.yaml").read_text().replace("readOnlyRootFilesystem", "readOnlyRootFilesytem"))
    result = run(BIN / "kubernetes-validate", "--strict", "-k", KUBERNETES_VERSION, bad)
    assert result.returncode != 0, result.stdout


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [(r["metadata"]["name"], r["spec"]["template"]["spec"]) for r in _of("Deployment") + _of("Job")]


@pytest.mark.parametrize(("name", "pod"), _pod_specs(), ids=[n for n, _ in _pod_specs()])
def test_every_pod_meets_the_restricted_pod_security_profile(name: str, pod: dict[str, Any]) -> None:
    # https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
        assert host_namespace not in pod
    containers = pod["containers"] + pod.get("initContainers", [])
    for container in containers:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context.get("privileged", False) is False
        # The read-only root needs a writable /tmp.
        assert {"name": "tmp", "mountPath": "/tmp"}  # noqa: S108 (a path in the manifest) in container["volumeMounts"], container["name"]
        assert "memory" in container["resources"]["limits"], container["name"]
    assert {v["name"] for v in pod["volumes"]} >= {"tmp"}


@pytest.mark.parametrize("name", sorted(_deployments()))
def test_every_process_is_probed_on_livez_and_readyz_of_its_http_port(name: str) -> None:
    (container,) = _deployments()[name]["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(_config()["ESCALATION_METRICS_ADDR"].rpartition(":")[2])
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert "startupProbe" in container


@pytest.mark.parametrize("name", sorted(_deployments()))
def test_every_deployment_migrates_first_with_its_own_image(name: str) -> None:
    pod = _deployments()[name]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (container,) = pod["containers"]
    assert init["args"] == ["migrate"]
    # The same image: a rollout to a new image migrates to that image's schema first.
    assert init["image"] == container["image"]
    assert init["envFrom"] == container["envFrom"]


def test_the_migration_job_runs_migrate_once_and_is_cleaned_up() -> None:
    (job,) = _of("Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0  # re-appliable once the old one is gone


def test_the_kustomization_sets_one_image_for_every_container() -> None:
    kustomization = load(K8S / "kustomization.yaml")
    assert kustomization["resources"] == ["escalation.yaml"]
    names = {i["name"] for i in kustomization["images"]}
    for _, pod in _pod_specs():
        for container in pod["containers"] + pod.get("initContainers", []):
            assert container["image"] in names


def test_serve_has_a_pdb_and_an_hpa_and_a_service() -> None:
    serve = _deployments()["escalation-serve"]
    labels = serve["spec"]["template"]["metadata"]["labels"]
    (pdb,) = _of("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable")
    (hpa,) = _of("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "escalation-serve")
    assert hpa["spec"]["minReplicas"] >= 2  # with the PDB, a drain never empties the service
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (service,) = _of("Service")
    assert service["spec"]["selector"].items() <= labels.items()


def test_serve_drains_within_its_termination_grace_period() -> None:
    pod = _deployments()["escalation-serve"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    grace = float(_config()["ESCALATION_SHUTDOWN_GRACE_SECONDS"])
    # preStop, then SIGTERM and the drain (at most the grace), then a margin to exit before SIGKILL.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + grace + 2
    assert float(_config()["ESCALATION_GRPC_MAX_CONNECTION_AGE_SECONDS"]) > 0


def test_the_config_map_sets_only_known_variables() -> None:
    known = {v.name for v in VARIABLES}
    assert set(_config()) <= known, set(_config()) - known


def test_no_secret_value_is_in_the_manifests() -> None:
    assert not _of("Secret")
    for key in _config():
        assert not re.search("SECRET|PASSWORD|DATABASE_URL", key), key
