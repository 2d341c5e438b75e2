"""Helpers of bench/gpu_vs_trl.py: logging, percentiles, versions, device facts, MFU and the Markdown report.
Kept apart so the harness file holds the roles (build, peak, rltune, trl) and the driver."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def med(xs):
    return statistics.median(xs) if xs else None


def r4(x):
    return None if x is None else round(x, 4)


def third_party_modules() -> list[str]:
    """Top-level non-stdlib modules this process imported (what must be installed on the GPU machine)."""
    std = set(getattr(sys, "stdlib_module_names", ()))
    tops = {m.split(".")[0] for m in list(sys.modules)}
    return sorted(t for t in tops if t and not t.startswith("_") and t not in std and t not in ("rltune", "tests",
                                                                                                 "rltune_rewards"))


def versions() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("transformers", "trl", "accelerate", "peft", "datasets", "tokenizers", "pydantic"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
            out[name] = None
    return out


def device_info(device: str) -> dict:
    import torch

    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        return {"device": torch.cuda.get_device_name(0), "device_type": "cuda",
                "memory_gib": round(p.total_memory / 2**30, 1),
                "sm_count": p.multi_processor_count, "capability": f"{p.major}.{p.minor}"}
    return {"device": f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)",
            "device_type": "cpu",
            "torch_threads": torch.get_num_threads()}


def cuda_mem(device: str) -> dict:
    import torch

    if not device.startswith("cuda"):
        return {}
    return {"peak_gpu_mem_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
            "peak_gpu_mem_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3)}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def dtype_of(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[name]


# ============================================================================================== child roles
def mfu(run: dict, peak_tflops: float | None) -> dict:
    """Training-phase FLOP/s = Σ 6·N·tokens / Σ train time over the timed steps; MFU against the measured peak."""
    fl, tt = run.pop("_train_flops", None), run.pop("_train_t", None)
    flp = run.pop("_train_flops_padded", None)
    if not fl or not tt or not peak_tflops:
        return {}
    out = {"train_tflops": round(sum(fl) / sum(tt) / 1e12, 3),
           "train_mfu": round(sum(fl) / sum(tt) / (peak_tflops * 1e12), 4),
           "train_mfu_per_step_median": round(med([f / t for f, t in zip(fl, tt)]) / (peak_tflops * 1e12), 4)}
    if flp:
        out["train_mfu_padded_tokens"] = round(sum(flp) / sum(tt) / (peak_tflops * 1e12), 4)
    return out


def write_md(res: dict, path: Path) -> str:
    t, r = res.get("trl", {}), res.get("rltune", {})
    ra = res.get("ratios") or {}
    s, m = res["settings"], res.get("model", {})

    def f(x, fmt):
        return "—" if x is None else format(x, fmt)

    rows = [("s/step median", "s_per_step_median", ".3f"), ("s/step p90", "s_per_step_p90", ".3f"),
            ("s/step median, start to start (incl. logging)", "s_per_step_start_to_start_median", ".3f"),
            ("completion tok/s", "completion_tok_per_s", ".0f"),
            ("mean completion length", "mean_completion_len", ".1f"),
            ("generate s/step median (TRL transformers.generate, rltune time/rollout)", "generate_s_median", ".3f"),
            ("training phase s/step median", "train_phase_s_median", ".3f"),
            ("training-phase TFLOP/s", "train_tflops", ".3g"), ("training-phase MFU", "train_mfu", ".1%"),
            ("peak GPU mem allocated GiB", "peak_gpu_mem_allocated_gib", ".2f"),
            ("peak RSS MB (child process)", "peak_rss_mb", ".0f"),
            ("weights dtype", "weights_dtype", "s")]
    pk = res.get("matmul_peak", {})
    L = [f"# rltune vs TRL GRPOTrainer on {res.get('device', '?')}", "",
         f"{m.get('arch', '?')} random init, {'tiny dims' if s['tiny'] else 'Qwen2-0.5B body'}, vocab {m.get('vocab')} "
         f"(char tokenizer), {f(m.get('params'), ',')} params, {s['dtype']}; {s['prompts']} prompts × {s['samples']} "
         f"samples, {s['max_new']} new tokens, lr {s['lr']}, token-mean (TRL dapo), beta 0; {s['warmup']} warm-up + "
         f"{s['timed']} timed steps. Matmul peak {pk.get('tflops')} TFLOP/s ({pk.get('dtype')} {pk.get('shape')}).",
         "", "| metric | TRL | rltune | rltune / TRL |", "|---|---|---|---|"]
    for name, key, fmt in rows:
        rat = ra.get(key)
        L.append(f"| {name} | {f(t.get(key), fmt)} | {f(r.get(key), fmt)} | {f(rat, '.2f')} |")
    L += ["", "TRL training phase = step − `_prepare_inputs`; rltune = `time/update` (CUDA-synchronised). FLOPs = "
          "6 × params × (prompt + completion tokens)."]
    for k in ("rltune", "trl"):
        if res.get(k, {}).get("error"):
            L.append(f"\n**{k} failed**: {res[k]['error']}")
    text = "\n".join(L) + "\n"
    path.write_text(text)
    return text


