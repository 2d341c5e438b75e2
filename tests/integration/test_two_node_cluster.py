"""A two-node Ray cluster on this one machine (a head and a worker node from `ray start`, both on 127.0.0.1, token
auth on as Ray requires for such clusters) runs the tiny recipe end to end from the CLI, joining the cluster with
`cluster.address=...`, with training ranks and rollout workers on both nodes."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("deepspeed")

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_node_cluster():
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    port = _free_port()
    # A private temp dir names every process of this cluster, so teardown stops exactly these (not `ray stop`,
    # which would stop every Ray on the machine). Short: Ray's unix socket paths must stay under 108 bytes.
    tmp = tempfile.mkdtemp(prefix="r2n", dir="/tmp")
    common = ["--num-cpus=2", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", f"--temp-dir={tmp}", "--include-dashboard=false",
                        *common], env=env, check=True, capture_output=True, timeout=120, start_new_session=True)
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", *common], env=env, check=True,
                       capture_output=True, timeout=120, start_new_session=True)
        yield f"127.0.0.1:{port}", env
    finally:
        ps = subprocess.run(["ps", "-eww", "-o", "pgid=,args="], capture_output=True, text=True).stdout.splitlines()
        for pgid in {int(line.split()[0]) for line in ps if tmp in line}:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1)
        shutil.rmtree(tmp, ignore_errors=True)
        # `ray start --head` records its address for later `ray.init()` calls; a dead one would mislead them.
        current = Path("/tmp/ray/ray_current_cluster")
        if current.is_file() and current.read_text().strip() == f"127.0.0.1:{port}":
            current.unlink()


def test_tiny_recipe_runs_on_two_nodes(two_node_cluster, tmp_path):
    address, env = two_node_cluster
    out = tmp_path / "run"
    cmd = [str(Path(sys.executable).with_name("rltune")), "train", "tests/helpers/two_node.yaml", f"run.output_dir={out}",
           f"cluster.address={address}"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    placed = json.loads((out / "cluster.json").read_text())
    assert len(placed["train_rank_nodes"]) == 2 and len(set(placed["train_rank_nodes"])) == 2
    assert len(set(placed["rollout_worker_nodes"])) == 2  # colocated: worker k on rank k's node
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "loss/policy" in m]
    assert len(steps) == 2 and all(m["rollout/weight_version"] == i for i, m in enumerate(steps))
    assert (out / "final" / "config.json").is_file()
