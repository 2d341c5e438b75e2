"""Soak: a tiny recipe run under random SIGTERM + `--resume` cycles must end with the metrics of an
uninterrupted run (same seed). Writes bench/results/soak.json.

    python bench/soak.py --minutes 8 --steps 600
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("reward/mean", "loss/total", "train/grad_norm", "eval/accuracy", "rollout/response_len")
RECIPE = {
    "run": {"name": "soak", "seed": 3, "steps": 120, "eval_interval": 20, "save_interval": 7, "threads": 1},
    "model": {"tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128}},
    "data": {"source": "builtin:addition", "task_args": {"digits": 2, "n_train": 2000, "n_test": 100}},
    "rollout": {"prompts_per_step": 8, "samples_per_prompt": 4, "max_new_tokens": 4},
    "train": {"lr": 1e-3, "micro_batch_size": 16},
    "rewards": [{"use": "exact_match"}],
    "logging": {"console": False},
}


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: r.get(k) for k in ("step", *COMPARED)} for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--out", default=str(ROOT / "bench/results/soak.json"))
    args = ap.parse_args()
    work = ROOT / "bench/results/tmp/soak"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    recipes = {}
    for name in ("whole", "cycled"):
        raw = json.loads(json.dumps(RECIPE))
        raw["run"].update(steps=args.steps, output_dir=str(work / name))
        recipes[name] = work / f"{name}.yaml"
        recipes[name].write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "rltune.cli", "train"]
    subprocess.run([*cmd, str(recipes["whole"])], cwd=ROOT, env=env, check=True, capture_output=True)

    rng, deadline, cycles, resumes = random.Random(0), time.time() + args.minutes * 60, 0, 0
    first = True
    while True:
        p = subprocess.Popen([*cmd, str(recipes["cycled"]), *([] if first else ["--resume"])], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        first, resumes = False, resumes + (not first)
        try:
            rc = p.wait(timeout=rng.uniform(5, 15)) if time.time() < deadline else p.wait()
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGTERM)
            rc = p.wait()
            cycles += 1
            done = (work / "cycled" / "final").exists()
            if rc != 0 and not done:  # a signal landing during interpreter exit after the last step is fine
                raise SystemExit(f"SIGTERM'd run exited {rc}:\n{p.stdout.read()[-2000:]}")
            if done:
                break
            continue
        if rc != 0:
            raise SystemExit(f"run exited {rc}:\n{p.stdout.read()[-2000:]}")
        break
    same = metrics(work / "whole") == metrics(work / "cycled")
    res = {"minutes": args.minutes, "steps": args.steps, "sigterm_cycles": cycles, "resumes": resumes,
           "metrics_identical": same, "records": len(metrics(work / "whole"))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res))
    if not same:
        raise SystemExit("metrics differ between the cycled and the uninterrupted run")


if __name__ == "__main__":
    main()
