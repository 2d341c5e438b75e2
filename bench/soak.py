"""Soak: a tiny recipe run under random SIGTERM + `--resume` cycles (and, with --rollout-workers, random kill -9
of rollout workers) must end with the metrics of an uninterrupted run (same seed). Writes bench/results/soak.json.

    python bench/soak.py --minutes 8 --steps 600
    python bench/soak.py --minutes 30 --steps 6000 --rollout-workers 2 --out bench/results/soak_workers.json
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


def _ancestors(pid: int) -> set[int]:
    out = set()
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        out.add(pid)
    return out


def kill_a_worker(run_pid: int, rng: random.Random) -> int:
    """kill -9 one rollout-worker actor process of the run `run_pid` (its Ray is the run's child); 1 if killed."""
    ps = subprocess.run(["ps", "-eww", "-o", "pid=,args="], capture_output=True, text=True).stdout.splitlines()
    pids = [int(line.split()[0]) for line in ps if "ray::RolloutWorker" in line]
    mine = [pid for pid in pids if run_pid in _ancestors(pid)]
    if not mine:
        return 0
    os.kill(rng.choice(mine), signal.SIGKILL)
    return 1


def _wait_for_new_step(p: subprocess.Popen, path: Path, timeout: float = 300) -> None:
    n0 = len(path.read_text().splitlines()) if path.exists() else 0
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < timeout:
        if path.exists() and len(path.read_text().splitlines()) > n0:
            return
        time.sleep(0.2)


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: r.get(k) for k in ("step", *COMPARED)} for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--out", default=str(ROOT / "bench/results/soak.json"))
    ap.add_argument("--rollout-workers", type=int, default=0,
                    help="run rollout in N Ray workers and kill -9 one at random between SIGTERMs")
    args = ap.parse_args()
    work = ROOT / "bench/results/tmp/soak"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    recipes = {}
    for name in ("whole", "cycled"):
        raw = json.loads(json.dumps(RECIPE))
        raw["run"].update(steps=args.steps, output_dir=str(work / name))
        raw["cluster"] = {"rollout_workers": args.rollout_workers}
        recipes[name] = work / f"{name}.yaml"
        recipes[name].write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "rltune.cli", "train"]
    subprocess.run([*cmd, str(recipes["whole"])], cwd=ROOT, env=env, check=True, capture_output=True)

    rng, deadline, cycles, resumes, kills = random.Random(0), time.time() + args.minutes * 60, 0, 0, 0
    first, finished = True, False
    while not finished:
        p = subprocess.Popen([*cmd, str(recipes["cycled"]), *([] if first else ["--resume"])], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        first, resumes = False, resumes + (not first)
        # Signals are aimed at training, not start-up (Ray's own handler owns SIGTERM until fit() begins).
        _wait_for_new_step(p, work / "cycled" / "metrics.jsonl")
        while True:
            try:
                rc = p.wait(timeout=rng.uniform(5, 15)) if time.time() < deadline else p.wait()
            except subprocess.TimeoutExpired:
                if args.rollout_workers and rng.random() < 0.5:  # kill -9 a rollout worker; the run goes on
                    kills += kill_a_worker(p.pid, rng)
                    continue
                p.send_signal(signal.SIGTERM)
                rc = p.wait()
                cycles += 1
                finished = (work / "cycled" / "final").exists()
                if rc != 0 and not finished:  # a signal landing during interpreter exit after the last step is fine
                    (work / "failed.log").write_text(log := p.stdout.read())
                    raise SystemExit(f"SIGTERM'd run exited {rc} (log: {work / 'failed.log'}):\n{log[-2000:]}")
                break
            if rc != 0:
                (work / "failed.log").write_text(log := p.stdout.read())
                raise SystemExit(f"run exited {rc} (log: {work / 'failed.log'}):\n{log[-2000:]}")
            finished = True
            break
    same = metrics(work / "whole") == metrics(work / "cycled")
    res = {"minutes": args.minutes, "steps": args.steps, "rollout_workers": args.rollout_workers,
           "worker_kills": kills, "sigterm_cycles": cycles, "resumes": resumes,
           "metrics_identical": same, "records": len(metrics(work / "whole"))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res))
    if not same:
        raise SystemExit("metrics differ between the cycled and the uninterrupted run")


if __name__ == "__main__":
    main()
