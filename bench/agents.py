"""GRPO vs GRPO+EMPG (segment: turn) on the multi-turn guessing game (CPU, recipes/agent-guess-tiny.yaml).

Both variants start from the same SFT model (trained once, on transcripts of an expert that guesses uniformly
among the numbers still possible: ~57% success; binary search would win 15/16), see the same prompts and the
same budget (B=8 prompts x G=8 episodes per step). EMPG uses the paper's defaults (k = k' = 1, zeta = 0.05) with
one step = one model turn (extras["step_idx"] from the multi-turn engine). Per seed and variant it reports:

  success_sampled  mean episode return of 16 secrets x 32 episodes at T=1 with the final model (512 episodes)
  success_greedy   greedy success over all 16 secrets with the final model (coarse: steps of 1/16)
  curve            training reward (sampled success of that step's 64 episodes) per step
and the paired EMPG − GRPO difference of success_sampled per seed. Runs go seed-major, one at a time.

    python bench/agents.py                              # 5 seeds -> bench/results/agents_empg.{json,png}, ~6 CPU-min
    python bench/agents.py --steps 40 --seeds 1 --out /tmp/agents
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rltune.config.load import load_recipe  # noqa: E402
from rltune.config.schema import ModifierSpec  # noqa: E402
from rltune.data.batch import PromptBatch  # noqa: E402
from rltune.envs.guess_number import guess_number_rows  # noqa: E402
from rltune.logging import read_metrics  # noqa: E402
from rltune.rollout.base import SamplingParams  # noqa: E402
from rltune.trainer import Trainer  # noqa: E402

RECIPE = ROOT / "recipes/agent-guess-tiny.yaml"
TMP = ROOT / "bench/results/tmp/agents"
VARIANTS = {"grpo": [], "grpo+empg": [{"use": "empg", "name": "empg", "args": {"segment": "turn"}}]}


def sft_model(steps: int) -> str:
    """The shared SFT warm start (trained once, reused by later runs of the bench)."""
    from rltune.sft import run_sft

    out = TMP / f"sft-{steps}"
    if not (out / "config.json").is_file():
        r = load_recipe(RECIPE, [f"sft.output_dir={out}", f"sft.steps={steps}"])
        print(f"SFT ({steps} steps) -> {out}", flush=True)
        run_sft(r, base_dir=ROOT)
    return str(out)


def sampled_success(tr: Trainer, n: int, seed: int) -> float:
    """Mean return of n episodes at the rollout temperature for each of the held-out secrets."""
    rows = guess_number_rows("test", **{k: v for k, v in tr.recipe.data.task_args.items() if k in ("low", "high")})
    pb = PromptBatch(prompts=[r["prompt"] for r in rows], meta={k: [r[k] for r in rows] for k in rows[0]})
    ro = tr.recipe.rollout
    b = tr.rollout.generate(pb, SamplingParams(n=n, temperature=ro.temperature, seed=seed))
    return float(torch.tensor(b.meta["env_return"]).mean())


def run(variant: str, seed: int, steps: int, sft: str, n_eval: int) -> dict:
    out = TMP / f"{variant}-s{seed}"
    r = load_recipe(RECIPE, [f"run.seed={seed}", f"run.steps={steps}", f"run.output_dir={out}", "run.threads=1",
                             f"run.eval_interval={max(1, steps // 5)}", f"sft.output_dir={sft}",
                             "logging.console=false"])
    r = r.model_copy(update={"modifiers": [ModifierSpec(**m) for m in VARIANTS[variant]]})
    t0 = time.perf_counter()
    tr = Trainer(r, base_dir=ROOT, overwrite=True)
    start = sampled_success(tr, n_eval, seed=10_000 + seed)
    tr.fit()
    end = sampled_success(tr, n_eval, seed=20_000 + seed)
    rows = [m for m in read_metrics(tr.run_dir) if "reward/mean" in m]
    evals = {m["step"]: m["eval/accuracy"] for m in read_metrics(tr.run_dir) if "eval/accuracy" in m}
    return {"variant": variant, "seed": seed, "success_sampled_start": start, "success_sampled": end,
            "success_greedy_start": evals.get(0), "success_greedy": evals.get(steps), "greedy_curve": evals,
            "curve": [m["reward/mean"] for m in rows], "turns": [m.get("reward/env_return/turns") for m in rows],
            # |advantage| per token: EMPG rescales it, so a gap may partly be a step-size effect
            "adv_abs_mean": statistics.mean(m["algo/adv_abs_mean"] for m in rows),
            "entropy_last10": statistics.mean(m["algo/entropy"] for m in rows[-10:]),
            "seconds": time.perf_counter() - t0}


def summary(results: list[dict]) -> dict:
    out = {}
    for v in VARIANTS:
        rs = [x for x in results if x["variant"] == v]
        for key in ("success_sampled", "success_greedy", "success_sampled_start"):
            vals = [x[key] for x in rs]
            out[f"{v}/{key}"] = {"mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                                 "per_seed": vals}
        last = [statistics.mean(x["curve"][-10:]) for x in rs]
        out[f"{v}/train_reward_last10"] = {"mean": statistics.mean(last), "per_seed": last}
        out[f"{v}/adv_abs_mean"] = statistics.mean(x["adv_abs_mean"] for x in rs)
    diffs = [e["success_sampled"] - g["success_sampled"] for g in results if g["variant"] == "grpo"
             for e in results if e["variant"] == "grpo+empg" and e["seed"] == g["seed"]]
    out["empg_minus_grpo/success_sampled"] = {"mean": statistics.mean(diffs), "per_seed": diffs,
                                              "empg_better_seeds": sum(d > 0 for d in diffs)}
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"grpo": "tab:blue", "grpo+empg": "tab:orange"}
    for v, c in colors.items():
        curves = [x["curve"] for x in results if x["variant"] == v]
        k = 10  # moving average over steps: one step is only 64 episodes
        for cv in curves:
            sm = [statistics.mean(cv[max(0, i - k + 1): i + 1]) for i in range(len(cv))]
            ax.plot(range(1, len(sm) + 1), sm, color=c, alpha=0.35, lw=1)
        mean = [statistics.mean(col) for col in zip(*curves)]
        sm = [statistics.mean(mean[max(0, i - k + 1): i + 1]) for i in range(len(mean))]
        ax.plot(range(1, len(sm) + 1), sm, color=c, lw=2.5, label=f"{v} (mean of {len(curves)} seeds)")
    ax.set(xlabel="step", ylabel="training success (10-step moving avg)", title="guess 1-16 in 4 turns")
    ax.legend()
    seeds = sorted({x["seed"] for x in results})
    w = 0.38
    for j, (v, c) in enumerate(colors.items()):
        vals = [next(x["success_sampled"] for x in results if x["variant"] == v and x["seed"] == s) for s in seeds]
        bx.bar([i + (j - 0.5) * w for i in range(len(seeds))], vals, w, color=c, label=v)
    start = statistics.mean(x["success_sampled_start"] for x in results)
    bx.axhline(start, color="gray", ls="--", lw=1, label=f"SFT start ({start:.2f})")
    bx.set(xticks=range(len(seeds)), xticklabels=[f"seed {s}" for s in seeds], ylabel="final success (512 episodes)",
           title="after RL, sampled at T=1")
    bx.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--sft-steps", type=int, default=300)
    p.add_argument("--eval-episodes", type=int, default=32, help="episodes per secret for success_sampled")
    p.add_argument("--out", default=str(ROOT / "bench/results"))
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    sft = sft_model(a.sft_steps)
    results = []
    for seed in range(a.seeds):
        for v in VARIANTS:
            res = run(v, seed, a.steps, sft, a.eval_episodes)
            print(f"seed {seed} {v:10s} success sampled {res['success_sampled_start']:.3f} -> "
                  f"{res['success_sampled']:.3f}  greedy {res['success_greedy_start']} -> {res['success_greedy']}  "
                  f"({res['seconds']:.0f} s)", flush=True)
            results.append(res)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"bench": "agents_empg", "recipe": str(RECIPE.relative_to(ROOT)), "steps": a.steps, "seeds": a.seeds,
           "sft_steps": a.sft_steps, "eval_episodes_per_secret": a.eval_episodes, "variants": VARIANTS,
           "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.machine(),
                       "threads": 1},
           "summary": summary(results), "runs": results}
    (out / "agents_empg.json").write_text(json.dumps(doc, indent=1))
    plot(results, out / "agents_empg.png")
    print(json.dumps(doc["summary"], indent=1))


if __name__ == "__main__":
    main()
