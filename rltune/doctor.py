"""`rltune doctor`: what this machine offers rltune, and each problem with its fix."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Check:
    name: str
    ok: bool | None      # None = optional and absent
    detail: str
    fix: str = ""


def _version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def run_checks(check_ray: bool = True) -> list[Check]:
    out: list[Check] = [Check("python", sys.version_info >= (3, 10), sys.version.split()[0], "use Python 3.10+")]
    required = ["torch", "transformers", "trl", "peft", "datasets", "accelerate", "pydantic", "ray", "wandb",
                "math-verify"]
    for pkg in required:
        v = _version(pkg)
        out.append(Check(pkg, v is not None, v or "missing", f"pip install -e . (or `make venv`) installs {pkg}"))
    for pkg, why in (("deepspeed", "ZeRO training ranks"), ("vllm", "GPU rollout engine"),
                     ("diffusers", "diffusion policies")):
        v = _version(pkg)
        out.append(Check(pkg, True if v else None, v or f"not installed (optional: {why})",
                         "" if v else f"pip install '.[{'gpu' if pkg == 'vllm' else pkg}]'"))
    import torch

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        out.append(Check("devices", True, f"{torch.cuda.device_count()} CUDA: {names}"))
    else:
        cuda_build = torch.version.cuda
        out.append(Check("devices", True, f"CPU only ({os.cpu_count()} cores; torch "
                         f"{'CUDA ' + cuda_build + ' build without a visible GPU' if cuda_build else 'CPU build'})",
                         "" if not cuda_build else "a CUDA build on a CPU machine wastes GBs: pip install "
                         "torch==2.13.0 (CPU wheel)"))
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    out.append(Check("offline mode", True, "HF_HUB_OFFLINE=1 (models/datasets from local paths only)" if offline
                     else "online: hub names resolve when a network exists", ""))
    if _version("deepspeed"):
        r = subprocess.run([sys.executable, "-c", "import deepspeed, deepspeed.ops.adam as a; print(deepspeed.__version__)"],
                           capture_output=True, text=True, timeout=120)
        out.append(Check("deepspeed import", r.returncode == 0, (r.stdout or r.stderr).strip().splitlines()[-1][:120]
                         if (r.stdout or r.stderr) else "", "reinstall with: DS_BUILD_OPS=0 pip install "
                         "--no-build-isolation deepspeed"))
    if check_ray:
        ray_bin = shutil.which("ray")
        if ray_bin is None:
            out.append(Check("ray cluster", None, "ray CLI not on PATH"))
        else:
            r = subprocess.run([ray_bin, "status"], capture_output=True, text=True, timeout=60)
            reachable = r.returncode == 0
            out.append(Check("ray cluster", True if reachable else None,
                             "reachable (cluster.address=auto joins it)" if reachable else
                             "none running (rltune starts a local one when needed)",
                             "" if reachable else "multi-node: see launch/README.md"))
    return out
