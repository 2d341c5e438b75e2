"""Scale-out machinery cost: the tiny recipe in one process, with 1 and 2 Ray rollout workers, with 1 and 2 DeepSpeed
ZeRO ranks in Ray actors, and with both (colocated). Writes bench/results/scale.{json,md}.

    python bench/scale.py --steps 15

On a 2-core machine nothing gets faster with more actors (they share the same 2 cores); the point is what the
machinery costs per step: the sync phase (gather + object store + load + checksum), scheduling and the extra
processes' memory. Peak RSS is read from /proc/<pid>/status (VmHWM) of the driver and of every actor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE = {
    "run": {"name": "scale", "seed": 0, "threads": 1},
    "model": {"tiny": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 768,
                       "max_position_embeddings": 64}},
    "data": {"source": "builtin:addition", "task_args": {"digits": 3, "n_train": 4000, "n_test": 100}},
    "rollout": {"prompts_per_step": 16, "samples_per_prompt": 8, "max_new_tokens": 8},
    "train": {"lr": 2e-5, "micro_batch_size": 64},
    "rewards": [{"use": "exact_match"}],
    "logging": {"console": False},
}
CONFIGS = {
    "in-process": {},
    "1 rollout worker": {"rollout_workers": 1},
    "2 rollout workers": {"rollout_workers": 2},
    "1 ZeRO-2 rank": {"train_ranks": 1, "zero_stage": 2},
    "2 ZeRO-2 ranks": {"train_ranks": 2, "zero_stage": 2},
    "2 ZeRO-3 ranks + 2 workers (colocated)": {"train_ranks": 2, "zero_stage": 3, "rollout_workers": 2,
                                               "placement": "colocated"},
}
PHASES = ("time/rollout", "time/reward", "time/advantage", "time/update", "time/sync")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the medians")
    ap.add_argument("--out", default=str(ROOT / "bench/results/scale"))
    ap.add_argument("--only", help=argparse.SUPPRESS)  # internal: run one setup in this process, print its JSON
    args = ap.parse_args()
    if args.only is None:  # each setup in its own process, so every driver's peak RSS is its own
        import subprocess

        results = {}
        for name in CONFIGS:
            res = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--skip", str(args.skip),
                                  "--only", name], capture_output=True, text=True, check=True)
            results[name] = json.loads(res.stdout.strip().splitlines()[-1])
            print(name, json.dumps(results[name]), flush=True)
        return write(results, args)
    import ray

    from rltune.config.load import recipe_from_dict
    from rltune.logging import read_metrics
    from rltune.trainer import Trainer

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    work = ROOT / "bench/results/tmp/scale"
    results = {}
    for name, cluster in [(args.only, CONFIGS[args.only])]:
        raw = json.loads(json.dumps(BASE))
        raw["run"] |= {"steps": args.steps, "output_dir": str(work / name.replace(" ", "_"))}
        raw["cluster"] = cluster
        t0 = time.perf_counter()
        t = Trainer(recipe_from_dict(raw), overwrite=True)
        startup = time.perf_counter() - t0
        pids = {}
        if cluster.get("rollout_workers"):
            pids |= {f"rollout{k}": p for k, p in enumerate(ray.get([w.pid.remote() for w in t.rollout.workers]))}
        if cluster.get("train_ranks"):
            pids |= {f"rank{k}": p for k, p in enumerate(t.engine._call("pid"))}
            sync_bytes = sum(v.numel() * v.element_size() for v in ray.get(t.engine.weights_ref()).values())
        else:
            sync_bytes = sum(v.numel() * v.element_size() for v in t.model.state_dict().values()) \
                if cluster.get("rollout_workers") else 0
        t.rollout.shutdown = lambda: None  # keep actors alive until their peak memory is read
        shutdown = getattr(t.engine, "shutdown", None)
        if shutdown:
            t.engine.shutdown = lambda: None
        t.fit()
        rss = {k: peak_rss_mb(p) for k, p in pids.items()} | {"driver": peak_rss_mb(os.getpid())}
        if cluster.get("rollout_workers"):
            for w in t.rollout.workers:
                ray.kill(w)
        if shutdown:
            shutdown()
        rows = [m for m in read_metrics(t.run_dir) if "time/step" in m][args.skip:]
        med = lambda k: statistics.median(m.get(k, 0.0) for m in rows)  # noqa: E731
        results[name] = {
            "cluster": cluster,
            "startup_s": round(startup, 2),
            "s_per_step": round(med("time/step"), 4),
            **{k.split("/")[1] + "_s": round(med(k), 4) for k in PHASES},
            "sync_share": round(med("time/sync") / med("time/step"), 4),
            "bytes_per_sync": sync_bytes,
            "peak_rss_mb": {k: round(v, 1) for k, v in rss.items()},
            "reward_mean_last": rows[-1].get("reward/mean"),
        }
    ray.shutdown()
    print(json.dumps(results[args.only]), flush=True)


def write(results: dict, args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"steps": args.steps, "skipped_warmup": args.skip, "cpus": os.cpu_count(), "recipe": BASE,
            "note": "2-core CPU: actors share the cores, so no speed-up is expected; read the sync share and RSS."}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = ["| setup | s/step | rollout | update | sync | sync share | bytes/sync | peak RSS MB (per process) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        mem = ", ".join(f"{k} {v:.0f}" for k, v in r["peak_rss_mb"].items())
        lines.append(f"| {name} | {r['s_per_step']:.3f} | {r['rollout_s']:.3f} | {r['update_s']:.3f} | "
                     f"{r['sync_s']:.4f} | {100 * r['sync_share']:.1f}% | {r['bytes_per_sync'] / 1e6:.1f} MB | {mem} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
