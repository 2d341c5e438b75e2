"""bench/gpu_alignprop.py (the GPU check of issue 8) runs its whole code path on CPU with --tiny."""

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_gpu_alignprop_script_tiny(tmp_path):
    out = tmp_path / "g.json"
    args = ["--tiny", "--steps", "2", "--batch", "2", "--micro", "1", "--truncation", "fixed", "--out", str(out)]
    r = subprocess.run([sys.executable, "bench/gpu_alignprop.py", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["tiny"] and res["device"] == "cpu" and len(res["steps"]) == 2
    assert all(s["K"] == [1, 1] for s in res["steps"])            # fixed truncation: K = 1 per micro-batch
    assert res["lora_params_M"] > 0 and res["s_per_step"] > 0
    assert all(s["grad_norm"] > 0 and s["loss"] == s["loss"] for s in res["steps"])   # finite, with gradient
