"""Reward backprop on the tiny diffusion recipes (CPU): AlignProp and Direct-Align/SRPO, with reward curves and
before/after sample grids, plus AlignProp's truncation semantics side by side (spec visual_modifiers.md §2.5, §3.5).

Each run is the shipped recipe (recipes/diffusion-tiny-{alignprop,direct-align}.yaml) through the real trainer, in
this process, one after another, with held-out evaluation (16 fixed noises, deterministic sampling) every
`--eval-every` steps. The held-out metric is redness (mean R − ½(G+B) on [−1,1] pixels, range [−2, 2]);
Direct-Align optimises the SRPO relative score of a frozen toy CLIP, so redness is a metric it does not see.

    python bench/diffusion.py                     # -> bench/results/diffusion_*.{json,png}, ~2-3 CPU-minutes
    python bench/diffusion.py --no-variants --out /tmp/diff
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rltune.config.load import load_recipe  # noqa: E402
from rltune.logging import read_metrics  # noqa: E402
from rltune.trainer import build_trainer  # noqa: E402
from rltune.visual.diffusion_trainer import image_grid  # noqa: E402

RECIPES = {"alignprop": ROOT / "recipes/diffusion-tiny-alignprop.yaml",
           "direct_align": ROOT / "recipes/diffusion-tiny-direct-align.yaml"}
VARIANTS = {  # AlignProp truncation semantics (§2.2): same recipe, one modifier argument changed
    "fixed (K=1)": "fixed", "uniform (paper)": "uniform", "gaussian (official default)": "gaussian",
    "per_step (TRL)": "per_step", "full (K=T)": "full"}


def run(recipe: Path, out_dir: Path, overrides: list[str]) -> dict:
    r = load_recipe(recipe, [f"run.output_dir={out_dir}", "logging.console=false", *overrides])
    t = build_trainer(r, ROOT, overwrite=True)
    images, orig = {}, t.evaluate

    def evaluate():                     # keep the eval samples of every evaluation for the grid
        res = orig()
        images[t.step] = t.last_eval_images
        return res

    t.evaluate = evaluate
    t0 = time.perf_counter()
    t.fit()
    wall = time.perf_counter() - t0
    m = read_metrics(t.run_dir)
    ev = [(x["step"], x["eval/reward/redness"]) for x in m if "eval/reward/redness" in x]
    # training curve: redness of each step's rollouts (logged for every reward, weight 0 included)
    return {"eval_redness": ev, "train_redness": [(x["step"], x["reward/redness/mean"]) for x in m
                                                  if "reward/redness/mean" in x],
            "before": ev[0][1], "after": ev[-1][1], "wall_s": round(wall, 1),
            "s_per_step": round(sum(x["time/step"] for x in m if "time/step" in x) / max(1, len(m) - 1), 3),
            "_images": images}


def plot(name: str, res: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot(*zip(*res["train_redness"]), lw=1, alpha=0.7)
    ax[0].set(title=f"{name}: redness of the training rollouts", xlabel="step", ylabel="reward/redness/mean")
    ax[1].plot(*zip(*res["eval_redness"]), marker="o")
    ax[1].set(title="held-out redness (16 fixed noises, eta 0)", xlabel="step", ylabel="redness")
    fig.tight_layout()
    fig.savefig(out / f"diffusion_{name}_curve.png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results")
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-variants", action="store_true", help="skip the AlignProp truncation comparison")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    common = [f"run.eval_interval={a.eval_every}", f"run.threads={a.threads}"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, recipe in RECIPES.items():
            res = run(recipe, Path(tmp) / name, common)
            imgs = res.pop("_images")
            first, last = min(imgs), max(imgs)
            image_grid(torch.cat([imgs[first], imgs[last]]), a.out / f"diffusion_{name}_grid.png", nrow=16, scale=4)
            plot(name, res, a.out)
            res["grid"] = f"diffusion_{name}_grid.png: top row step {first}, bottom row step {last} (same noises)"
            res["recipe"] = str(recipe.relative_to(ROOT))
            if name == "alignprop" and not a.no_variants:
                res["truncation_variants"] = {}
                for label, trunc in VARIANTS.items():
                    v = run(recipe, Path(tmp) / trunc, [*common, f"modifiers.0.args.truncation={trunc}",
                                                        "run.eval_interval=null"])
                    res["truncation_variants"][label] = {k: v[k] for k in ("before", "after", "wall_s", "s_per_step")}
            (a.out / f"diffusion_{name}.json").write_text(json.dumps(res, indent=1))
            print(f"{name}: held-out redness {res['before']:.3f} -> {res['after']:.3f} in {res['wall_s']} s",
                  flush=True)
            for label, v in res.get("truncation_variants", {}).items():
                print(f"  {label:28s} {v['before']:.3f} -> {v['after']:.3f}  ({v['wall_s']} s)", flush=True)


if __name__ == "__main__":
    main()
