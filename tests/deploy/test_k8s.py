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
MANIFESTS = [K8S / "escalation.yaml", K8S / "migrate" / "job.yaml"]
# What an operator applies: `kubectl apply -k` of each (deploy/README.md).
KUSTOMIZATIONS = [K8S, K8S / "migrate"]
UID = 10001


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


def _kustomization(directory: Path) -> tuple[list[Path], dict[str, dict[str, Any]]]:
    """The manifest files ``directory``'s kustomization applies, and the image overrides (by name) they get
    from it and its components. Only what deploy/k8s uses (resources: files; components; images)."""
    kustomization = load(directory / "kustomization.yaml")
    files = [directory / r for r in kustomization.get("resources", [])]
    images = {i["name"]: i for i in kustomization.get("images", [])}
    for component in kustomization.get("components", []):
        nested_files, nested_images = _kustomization((directory / component).resolve())
        files += nested_files
        images |= nested_images
    return files, images


def _unset_images(directory: Path) -> list[str]:
    """Containers of ``directory``'s kustomization whose image no override replaces (kubelet would pull
    docker.io/library/<name>), or whose override names no registry image."""
    files, images = _kustomization(directory)
    found = []
    for path in files:
        for resource in load_all(path):
            if resource["kind"] not in ("Deployment", "Job"):
                continue
            pod = resource["spec"]["template"]["spec"]
            for container in pod["containers"] + pod.get("initContainers", []):
                override = images.get(container["image"])
                if override is None or "/" not in override.get("newName", ""):
                    found.append(f"{path.name}: {resource['metadata']['name']}/{container['name']}")
    return found


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(Path(p).relative_to(K8S)) or ".")
def test_every_container_of_each_kustomization_gets_the_release_image(directory: Path) -> None:
    assert _unset_images(directory) == []


def test_every_manifest_is_applied_through_a_kustomization_with_one_image_source() -> None:
    """A manifest applied with -f (as the migration Job once was) would run the placeholder image."""
    applied = [path.resolve() for directory in KUSTOMIZATIONS for path in _kustomization(directory)[0]]
    assert sorted(applied) == sorted(path.resolve() for path in MANIFESTS)
    # One images block, in the shared component: the Job and the Deployments cannot drift apart.
    overrides = [_kustomization(directory)[1] for directory in KUSTOMIZATIONS]
    assert all(o == overrides[0] for o in overrides)
    for directory in KUSTOMIZATIONS:
        assert "images" not in load(directory / "kustomization.yaml"), directory


def test_a_job_without_the_image_override_is_caught(tmp_path: Path) -> None:
    """The check can fail: the Job as it was (a kustomization without the image component) is reported."""
    (tmp_path / "job.yaml").write_text((K8S / "migrate" / "job.yaml").read_text())
    (tmp_path / "kustomization.yaml").write_text("resources: [job.yaml]\n")
    assert _unset_images(tmp_path) == ["job.yaml: escalation-migrate/migrate"]
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [job.yaml]\nimages: [{ name: escalation, newTag: '0.2.0' }]\n"  # a tag, but no registry
    )
    assert len(_unset_images(tmp_path)) == 1


def _secret_volumes(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}


def test_the_certificate_and_kafka_secrets_are_mounted_readable_by_the_process() -> None:
    pods = dict(_pod_specs())
    assert _secret_volumes(pods["escalation-serve"])["grpc-tls"]["secretName"] == "escalation-grpc-tls"
    assert _secret_volumes(pods["escalation-worker-outbox"])["kafka"]["secretName"] == "escalation-kafka"


@pytest.mark.parametrize(("name", "pod"), _pod_specs(), ids=[n for n, _ in _pod_specs()])
def test_secret_volumes_are_readable_by_uid_10001_and_never_mounted_by_subpath(name: str, pod: dict[str, Any]) -> None:
    secrets = _secret_volumes(pod)
    if secrets:
        # Secret files are root-owned; with fsGroup they belong to the process's group instead.
        assert pod["securityContext"]["runAsUser"] == UID
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"] == UID
    for volume, secret in secrets.items():
        mode = secret.get("defaultMode", 0o644)
        assert mode & 0o040, f"{name}/{volume}: defaultMode {mode:o} is not group-readable"
        assert not mode & 0o007, f"{name}/{volume}: defaultMode {mode:o} lets every user read the key"
        assert secret.get("optional") is True, f"{name}/{volume}: the pod must start while the feature is off"
    for container in pod["containers"] + pod.get("initContainers", []):
        for mount in container.get("volumeMounts", []):
            # The kubelet never updates a subPath mount: a renewed certificate would never be seen.
            assert not {"subPath", "subPathExpr"} & mount.keys(), f"{name}/{container['name']}"


def test_the_service_does_not_announce_cleartext_http2_when_serve_speaks_tls() -> None:
    (service,) = _of("Service")
    (port,) = service["spec"]["ports"]
    (container,) = _deployments()["escalation-serve"]["spec"]["template"]["spec"]["containers"]
    variables = {e["name"] for e in container.get("env", [])} | set(_config())
    if "ESCALATION_GRPC_TLS_CERT_FILE" in variables:
        assert port.get("appProtocol") != "kubernetes.io/h2c"
    else:
        assert port.get("appProtocol") == "kubernetes.io/h2c"


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
