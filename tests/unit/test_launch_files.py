"""The launch scripts parse (bash -n), the KubeRay manifest is a RayJob running `rltune train`, and the
Dockerfile installs the package with its gpu extra and enters through `rltune`. Ray's token auth: one token
made with `ray get-auth-token --generate`, handed to every node (file, SLURM environment, Kubernetes Secret);
the dashboard stays on localhost; the image runs as a non-root user."""

import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT


def test_shell_scripts_parse():
    for name in ("ray_head.sh", "ray_worker.sh", "slurm.sbatch"):
        r = subprocess.run(["bash", "-n", str(ROOT / "launch" / name)], capture_output=True, text=True)
        assert r.returncode == 0, (name, r.stderr)


def test_kuberay_manifest():
    doc = yaml.safe_load((ROOT / "launch" / "kuberay.yaml").read_text())
    assert doc["kind"] == "RayJob" and doc["spec"]["entrypoint"].startswith("rltune train")
    assert "cluster.address=auto" in doc["spec"]["entrypoint"]


def test_dockerfile_is_conventional():
    lines = [x.strip() for x in (ROOT / "Dockerfile").read_text().splitlines() if x.strip() and not x.startswith("#")]
    assert lines[0].startswith("FROM ") and "cuda" in lines[0]
    assert any(x.startswith("RUN pip install") and ".[gpu]" in x for x in lines)
    assert lines[-2] == 'ENTRYPOINT ["rltune"]'


def _containers(doc):
    spec = doc["spec"]["rayClusterSpec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [(g, c) for g in groups for c in g["template"]["spec"]["containers"]]


def test_kuberay_uses_token_auth_from_a_secret_and_a_local_dashboard():
    doc = yaml.safe_load((ROOT / "launch" / "kuberay.yaml").read_text())
    pairs = _containers(doc)
    assert len(pairs) == 2
    for _, c in pairs:  # every Ray container: token mode, the token from the Secret (never a literal)
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert "value" not in env["RAY_AUTH_TOKEN"]
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "rltune-ray-token", "key": "auth_token"}
    head = doc["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    assert doc["spec"]["submissionMode"] == "SidecarMode"  # submits from inside the head pod, via localhost
    text = (ROOT / "launch" / "kuberay.yaml").read_text()
    assert "kubectl create secret generic rltune-ray-token --from-literal=auth_token=" in text


def _script(name):
    return (ROOT / "launch" / name).read_text()


def test_scripts_create_and_hand_over_the_ray_token():
    head, worker, slurm = _script("ray_head.sh"), _script("ray_worker.sh"), _script("slurm.sbatch")
    for s in (head, worker, slurm):
        assert "export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}" in s
    # the head makes the token file (private) with Ray's own command; the worker refuses to start without one
    assert "(umask 077 && ray get-auth-token --generate" in head
    assert "ray get-auth-token >/dev/null" in worker and "exit 2" in worker
    # SLURM: one token per job, exported so srun hands it to every node and to the driver
    assert "RAY_AUTH_TOKEN=$(umask 077 && ray get-auth-token --generate" in slurm and "export RAY_AUTH_TOKEN" in slurm
    assert slurm.index("export RAY_AUTH_TOKEN") < slurm.index("ray start --head")
    assert "--dashboard-host=127.0.0.1" in slurm and "--include-dashboard=false" in head


@pytest.mark.skipif(shutil.which("ray") is None, reason="the ray CLI is not on PATH")
def test_worker_without_a_token_exits_2_before_starting_ray(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token here
    r = subprocess.run(["bash", str(ROOT / "launch" / "ray_worker.sh"), "127.0.0.1:1"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no Ray auth token" in r.stderr


def test_docker_image_runs_as_a_non_root_user_with_bubblewrap():
    lines = [x.strip() for x in (ROOT / "Dockerfile").read_text().splitlines() if x.strip() and not x.startswith("#")]
    users = [x.split()[1] for x in lines if x.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert lines.index(f"USER {users[-1]}") > max(i for i, x in enumerate(lines) if x.startswith("RUN "))
    assert any("bubblewrap" in x for x in lines if x.startswith("RUN apt-get"))
