"""The launch scripts parse (bash -n), the KubeRay manifest is a RayJob running `rltune train`, and the
Dockerfile installs the package with its gpu extra and enters through `rltune`."""

import subprocess

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
