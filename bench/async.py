"""Async rollouts: the tiny addition recipe with 2 Ray rollout workers and 1 DeepSpeed training rank, at
rollout.max_staleness 0 (synchronous), 1 and 2, same seeds, side by side in one invocation.
Writes bench/results/async.{json,md}.

    python bench/async.py                       # SFT warm start once, then 3 seeds x k in {0, 1, 2}
    python bench/async.py --rollout-heavy       # long completions from a random-init model, small batch

Settings are fixed here before any run: 60 GRPO steps from one SFT warm start (400 steps), seeds 0-2, held-out
greedy accuracy on 200 problems at the end, s/step = median over the steps after 5 warm-up steps. Every run is its
own process (a fresh Ray), one after another.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / "bench/results/tmp/async"

BASE = {
    "run": {"name": "async", "threads": 1, "eval_interval": 100000, "save_interval": 0},
    "model": {"tiny": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 768,
                       "max_position_embeddings": 64}, "tokenizer": "char"},
    "data": {"source": "builtin:addition", "task_args": {"digits": 3}, "shuffle": False, "eval_size": 200},
    "sft": {"output_dir": str(WORK / "sft"), "steps": 400, "lr": 1.0e-3, "batch_size": 128, "warmup_steps": 100},
    "rollout": {"prompts_per_step": 16, "samples_per_prompt": 8, "max_new_tokens": 8},
    "algo": {"advantage": "group_norm", "loss_agg": "token-mean"},
    "train": {"lr": 2.0e-5, "micro_batch_size": 128},
    "rewards": [{"use": "exact_match", "args": {"column": "answer"}}],
    "cluster": {"rollout_workers": 2, "train_ranks": 1, "zero_stage": 2},
    "logging": {"console": False},
}
STALENESS = (0, 1, 2)
SEEDS = (0, 1, 2)


# Rollout-heavy: a random-init model never stops early, so every row decodes all 48 tokens, and a small batch
# (4 prompts x 8) keeps the update short. Token-by-token decoding is latency-bound while the update is one batched
# forward/backward, so here generation takes longer than the update (the case async rollouts are for).
HEAVY = {"rollout": {"prompts_per_step": 4, "samples_per_prompt": 8, "max_new_tokens": 48},
         "train": {"micro_batch_size": 32}, "data": {"eval_size": 50}}


def recipe(k: int, seed: int, steps: int, max_new: int, heavy: bool = False) -> dict:
    raw = json.loads(json.dumps(BASE))
    if heavy:  # no warm start: a random-init model
        raw.pop("sft")
        for section, over in HEAVY.items():
            raw[section] |= over
        max_new = HEAVY["rollout"]["max_new_tokens"]
    raw["run"] |= {"seed": seed, "steps": steps,
                   "output_dir": str(WORK / f"k{k}_s{seed}_t{max_new}{'_heavy' if heavy else ''}")}
    raw["rollout"] |= {"max_staleness": k, "max_new_tokens": max_new}
    return raw


def one(k: int, seed: int, steps: int, skip: int, max_new: int, heavy: bool) -> dict:
    """Run one configuration in this process; returns its numbers."""
    from rltune.config.load import recipe_from_dict
    from rltune.logging import read_metrics
    from rltune.trainer import Trainer

    t = Trainer(recipe_from_dict(recipe(k, seed, steps, max_new, heavy)), overwrite=True)
    last = t.fit()
    rows = [m for m in read_metrics(t.run_dir) if "time/step" in m]
    timed = rows[skip:]
    med = lambda key: statistics.median(m.get(key, 0.0) for m in timed)  # noqa: E731
    return {
        "k": k, "seed": seed, "s_per_step": med("time/step"), "steps_per_s": 1.0 / med("time/step"),
        "wait_rollout_s": med("time/wait_rollout"), "wait_train_s": med("time/wait_train"),
        "overlap_frac": med("rollout/overlap_frac"), "update_s": med("time/update"),
        "staleness_max": max(m.get("rollout/staleness_max", 0.0) for m in rows),
        "staleness_mean": statistics.mean(m.get("rollout/staleness_mean", 0.0) for m in rows),
        "accuracy": last.get("eval/accuracy"), "reward_last10": statistics.mean(m["reward/mean"] for m in rows[-10:]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the medians")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--rollout-heavy", action="store_true", help="the HEAVY variant (see above)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)  # internal: k seed
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.steps, args.skip, args.max_new_tokens, args.rollout_heavy)), flush=True)
        return
    env = os.environ | {"WANDB_MODE": "offline", "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    if not args.rollout_heavy and not (WORK / "sft" / "config.json").is_file():
        from rltune.config.load import recipe_from_dict
        from rltune.sft import run_sft

        run_sft(recipe_from_dict(recipe(0, 0, 1, args.max_new_tokens)))
    runs = []
    for seed in SEEDS:  # interleaved, so a slow spell of the machine hits every k alike
        for k in STALENESS:
            res = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--skip", str(args.skip),
                                  "--max-new-tokens", str(args.max_new_tokens), "--one", str(k), str(seed),
                                  *(["--rollout-heavy"] if args.rollout_heavy else [])],
                                 capture_output=True, text=True, env=env)
            if res.returncode:
                sys.exit(f"k={k} seed={seed} failed:\n{res.stderr[-3000:]}")
            runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
    write(runs, args)


def _ci(xs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a t 95% interval (n ≤ 5 seeds: t from a table)."""
    t95 = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78}
    m = statistics.mean(xs)
    return m, (t95.get(len(xs), 2.0) * statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan"))


def write(runs: list[dict], args) -> None:
    out = Path(args.out or ROOT / f"bench/results/async{'_heavy' if args.rollout_heavy else ''}")
    summary = {}
    for k in STALENESS:
        rs = [r for r in runs if r["k"] == k]
        sync = {r["seed"]: r for r in runs if r["k"] == 0}
        speedup = [r["steps_per_s"] / sync[r["seed"]]["steps_per_s"] for r in rs]
        summary[k] = {"steps_per_s": _ci([r["steps_per_s"] for r in rs]), "speedup_vs_sync": _ci(speedup),
                      "accuracy": _ci([r["accuracy"] for r in rs]), "reward_last10": _ci([r["reward_last10"] for r in rs]),
                      "overlap_frac": statistics.mean(r["overlap_frac"] for r in rs),
                      "staleness_max": max(r["staleness_max"] for r in rs)}
    meta = {"steps": args.steps, "skipped_warmup": args.skip, "seeds": list(SEEDS), "cpus": os.cpu_count(),
            "max_new_tokens": args.max_new_tokens, "rollout_heavy": args.rollout_heavy,
            "recipe": recipe(0, 0, args.steps, args.max_new_tokens, args.rollout_heavy),
            "load_avg_at_end": os.getloadavg()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": runs, "summary": summary}, indent=1))
    lines = ["| max_staleness | steps/s (95% CI) | speed-up vs sync (paired) | held-out accuracy | overlap | max lag |",
             "|---|---|---|---|---|---|"]
    for k, s in summary.items():
        lines.append(f"| {k} | {s['steps_per_s'][0]:.3f} ± {s['steps_per_s'][1]:.3f} | "
                     f"{s['speedup_vs_sync'][0]:.3f} ± {s['speedup_vs_sync'][1]:.3f} | "
                     f"{s['accuracy'][0]:.3f} ± {s['accuracy'][1]:.3f} | {s['overlap_frac']:.2f} | "
                     f"{s['staleness_max']:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
