"""Side-by-side benchmark of the policy-gradient family on the tiny addition task (CPU).

Every algorithm recipe (recipes/addition-tiny-*.yaml, plus GRPO = recipes/addition-tiny.yaml) starts from the
same SFT model (runs/addition-tiny-sft; made with `rltune sft recipes/addition-tiny.yaml` if missing), runs
the same number of steps for each seed (run.seed), and is scored by greedy held-out accuracy (500 unseen
problems) before and after. Each run is a subprocess, so its peak RSS (resource.getrusage) is its own.

    python bench/algorithms.py --steps 100 --seeds 3            # -> bench/results/algorithms.{json,md}
    python bench/algorithms.py --steps 40 --seeds 3 --algos ppo grpo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALGOS = {
    "grpo": "recipes/addition-tiny.yaml",
    "drgrpo": "recipes/addition-tiny-drgrpo.yaml",
    "rloo": "recipes/addition-tiny-rloo.yaml",
    "reinforce_pp": "recipes/addition-tiny-reinforce_pp.yaml",
    "dapo": "recipes/addition-tiny-dapo.yaml",
    "gspo": "recipes/addition-tiny-gspo.yaml",
    "ppo": "recipes/addition-tiny-ppo.yaml",
}


def run_one(recipe: str, seed: int, steps: int, out_dir: Path, overrides: list[str]) -> dict:
    """One training run in this process (called in a child); returns its summary."""
    from rltune.config.load import load_recipe
    from rltune.logging import read_metrics
    from rltune.trainer import Trainer

    r = load_recipe(ROOT / recipe, [f"run.steps={steps}", f"run.seed={seed}", f"run.output_dir={out_dir}",
                                    "run.eval_interval=null", "run.save_interval=0", "run.keep_last=1",
                                    "logging.console=false", *overrides])
    t0 = time.perf_counter()
    Trainer(r, base_dir=ROOT, overwrite=True).fit()
    wall = time.perf_counter() - t0
    rows = read_metrics(out_dir)
    evals = [m for m in rows if "eval/accuracy" in m]
    train = [m for m in rows if "time/step" in m]
    return {
        "acc_start": evals[0]["eval/accuracy"], "acc_end": evals[-1]["eval/accuracy"],
        "s_per_step": statistics.mean(m["time/step"] for m in train), "wall_s": wall,
        "reward_last10": statistics.mean(m["reward/mean"] for m in train[-10:]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def ensure_sft() -> None:
    if (ROOT / "runs/addition-tiny-sft/config.json").is_file():
        return
    print("no SFT model at runs/addition-tiny-sft: running `rltune sft recipes/addition-tiny.yaml` (~4 min)")
    subprocess.run([sys.executable, "-m", "rltune.cli", "sft", "recipes/addition-tiny.yaml"], cwd=ROOT, check=True)


def _pm(xs: list[float], fmt: str) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{format(statistics.mean(xs), fmt)} ± {format(sd, fmt.lstrip('+'))}"


def write_results(res: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "algorithms.json").write_text(json.dumps(res, indent=1))
    lines = [
        f"# Policy-gradient family on tiny addition ({res['steps']} steps, seeds {res['seeds']})",
        "",
        f"From `runs/addition-tiny-sft`; greedy accuracy on 500 held-out problems. {res['machine']}; "
        f"load average at start {res['load_at_start']}. mean ± std over seeds.",
        "",
        "| algorithm | recipe | acc start | acc after | Δ acc | reward (last 10 steps) | s/step | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in res["algorithms"].items():
        if not runs:
            continue
        get = lambda k: [x[k] for x in runs]  # noqa: E731
        delta = [x["acc_end"] - x["acc_start"] for x in runs]
        lines.append(f"| {name} | `{ALGOS[name]}` | {_pm(get('acc_start'), '.3f')} | {_pm(get('acc_end'), '.3f')} | "
                     f"{_pm(delta, '+.3f')} | {_pm(get('reward_last10'), '.3f')} | {_pm(get('s_per_step'), '.2f')} | "
                     f"{max(get('peak_rss_mb')):.0f} |")
    lines += ["", "Reward (last 10 steps) is the raw training reward of the batch trained on: for DAPO that is after "
              "dynamic sampling kept only mixed groups, plus its length penalty, so it is not comparable across rows. "
              "Peak RSS is the run's own process (most of it is torch/transformers); s/step includes PPO's critic."]
    (out / "algorithms.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--algos", nargs="*", default=list(ALGOS), choices=list(ALGOS))
    ap.add_argument("--out", default=str(ROOT / "bench/results"))
    ap.add_argument("--runs-dir", default=str(ROOT / "runs/bench-algorithms"))
    ap.add_argument("--override", action="append", default=[], help="extra dotted override for every run")
    ap.add_argument("--one", nargs=3, metavar=("ALGO", "SEED", "OUT_JSON"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        name, seed, out_json = a.one
        res = run_one(ALGOS[name], int(seed), a.steps, Path(a.runs_dir) / f"{name}-s{seed}", a.override)
        Path(out_json).write_text(json.dumps(res))
        return

    ensure_sft()
    res = {"steps": a.steps, "seeds": list(range(a.seeds)), "load_at_start": round(os.getloadavg()[0], 2),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads 2",
           "overrides": a.override, "algorithms": {}}
    out = Path(a.out)
    prev = json.loads((out / "algorithms.json").read_text()) if (out / "algorithms.json").is_file() else None
    if prev and prev.get("steps") == a.steps and prev.get("overrides") == a.override:
        res["algorithms"] = {k: v for k, v in prev["algorithms"].items() if k not in a.algos}
    for name in a.algos:
        res["algorithms"][name] = []
        for seed in range(a.seeds):
            tmp = Path(a.runs_dir) / f"{name}-s{seed}.json"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, __file__, "--steps", str(a.steps), "--runs-dir", a.runs_dir, "--one", name,
                   str(seed), str(tmp)] + [f"--override={o}" for o in a.override]
            subprocess.run(cmd, cwd=ROOT, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
            run = json.loads(tmp.read_text())
            res["algorithms"][name].append({"seed": seed, **run})
            print(f"{name:13s} seed {seed}: acc {run['acc_start']:.3f} -> {run['acc_end']:.3f}  "
                  f"{run['s_per_step']:.2f} s/step  {run['peak_rss_mb']:.0f} MB", flush=True)
        write_results(res, out)
    write_results(res, out)
    print((out / "algorithms.md").read_text())


if __name__ == "__main__":
    main()
