"""deploy/kubernetes/: every overlay renders (kubectl kustomize) and passes the Kubernetes schemas
strictly (kubernetes-validate), and keeps the promises docs/running-as-a-service.md makes of it;
the page's render-and-check commands are run as written."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML: the test extra names it

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = sorted(p.name for p in (ROOT / "deploy" / "kubernetes" / "overlays").iterdir())
DOC = ROOT / "docs" / "running-as-a-service.md"


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is needed to render deploy/kubernetes (CI's machine has it)")
        pytest.skip("kubectl is not installed here (CI runs this test)")
    return found


def render(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(ROOT / "deploy" / "kubernetes" / "overlays" / overlay)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def test_there_is_a_second_tenant() -> None:
    assert len(OVERLAYS) >= 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_strictly(overlay: str) -> None:
    import kubernetes_validate

    docs = render(overlay)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Namespace", "Service", "ServiceAccount", "StatefulSet"]
    version = kubernetes_validate.latest_version()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any error
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert namespaces == {f"presencectl-{overlay}"}


def test_strict_validation_can_fail() -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    doc = next(d for d in render(OVERLAYS[0]) if d["kind"] == "StatefulSet")
    doc["spec"]["replicaCount"] = 1  # not a field of a StatefulSet
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_restricted_pod_per_tenant_with_probes_and_its_own_state(overlay: str) -> None:
    docs = {d["kind"]: d for d in render(overlay)}
    sts = docs["StatefulSet"]["spec"]
    assert sts["replicas"] == 1
    assert [t["metadata"]["name"] for t in sts["volumeClaimTemplates"]] == ["state"]
    pod = sts["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod["initContainers"]:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["requests"] and container["resources"]["limits"]
    (sync,) = pod["containers"]
    assert sync["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sync["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sync["args"][-2:] == ["--listen", "0.0.0.0:8080"]
    assert sync["envFrom"] == [{"secretRef": {"name": "presencectl-secrets"}}]
    assert docs["Service"]["spec"]["publishNotReadyAddresses"] is True
    # federated sign-in: the pod's own projected token, for Entra's token exchange
    env = {e["name"]: e.get("value") for e in sync["env"]}
    token_dir, token_name = env["AZURE_FEDERATED_TOKEN_FILE"].rsplit("/", 1)
    projected = next(v for v in pod["volumes"] if v["name"] == "azure-identity-token")
    (source,) = projected["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "api://AzureADTokenExchange"
    assert source["serviceAccountToken"]["path"] == token_name
    mounts = {m["name"]: m["mountPath"] for m in sync["volumeMounts"]}
    assert mounts["azure-identity-token"] == token_dir
    ns = docs["Namespace"]["metadata"]
    assert ns["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_tenant_profile_is_a_valid_profile_without_secrets(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from presencectl.config import load_profile

    config = next(d for d in render(overlay) if d["kind"] == "ConfigMap")["data"]
    assert config["profile"] == overlay
    assert not re.search(r"secret\s*=|password\s*=", config["config.toml"], re.I)
    monkeypatch.setenv("PRESENCECTL_CONFIG_DIR", str(tmp_path))
    (tmp_path / "config.toml").write_text(config["config.toml"])
    profile = load_profile(overlay)
    assert profile.name == overlay and profile.client_id


def test_the_page_s_commands_run_as_written(tmp_path: Path) -> None:
    """The 'render and check' block of docs/running-as-a-service.md, line by line, in a copy of
    the repository's deploy/ folder (the page writes contoso.yaml in the current directory)."""
    kubectl()
    text = DOC.read_text()
    section = text[text.index("## On Kubernetes") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    assert any(line.startswith("kubernetes-validate --strict") for line in lines)
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    bin_dir = str(Path(sys.executable).parent)  # kubernetes-validate of this environment
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    for line in lines:
        parts = shlex.split(line.split(">")[0])
        out = None
        if ">" in line:
            out = (tmp_path / line.split(">")[1].strip()).open("w")
        try:
            done = subprocess.run(
                parts, cwd=tmp_path, stdout=out or subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=env, timeout=120,
            )  # fmt: skip
        finally:
            if out is not None:
                out.close()
        assert done.returncode == 0, f"{line}: {done.stderr}"
    assert "statefulset/presencectl" in done.stderr + (done.stdout or "")
