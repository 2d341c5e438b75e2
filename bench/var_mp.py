"""VAR RL on the tiny toy: vanilla GRPO vs + scale reweighting (PANW) vs + PANW + Mask Propagation (spec
visual_modifiers.md §1.8; paper arXiv 2601.02256 Tables 3b and 5 for the real-size claims).

Every variant trains recipes/var-tiny.yaml (class-conditional corner-brightness reward, G = 16, Adam lr 1e-3,
on-policy single update) from the same init and the same prompts for each seed; only `modifiers:` differs:
  vanilla         none (token-mean GRPO)
  reweight        scale_reweight alpha=0.7
  reweight+mask   var_mask source=boxes mode=max alpha=0.7
  (+vmr, opt-in)  var_mask as above + var_vmr split=2 k=2 (3 prefix : 1 suffix steps)
The score is the spec's: mean training reward over the run (area under the reward curve / steps), per seed.
Writes bench/results/var_mp.json and var_mp.png (mean curves with the seed range, and decoded samples of each
variant's seed-0 final policy, one row per class).

    python bench/var_mp.py --seeds 3 --steps 80        # ~2-3 CPU-minutes
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rltune.config.load import load_recipe  # noqa: E402
from rltune.config.schema import Recipe  # noqa: E402
from rltune.logging import read_metrics  # noqa: E402
from rltune.models.var import sample_var  # noqa: E402
from rltune.visual.var_data import corner_box  # noqa: E402
from rltune.visual.var_trainer import VarTrainer  # noqa: E402

MASK = {"use": "var_mask", "args": {"source": "boxes", "mode": "max", "alpha": 0.7}}
VARIANTS = {
    "vanilla": [],
    "reweight": [{"use": "scale_reweight", "args": {"alpha": 0.7}}],
    "reweight+mask": [MASK],
    "reweight+mask+vmr": [MASK, {"use": "var_vmr", "args": {"split": 2, "k": 2}}],
}
ORDER = ["vanilla", "reweight", "reweight+mask"]


def recipe_for(variant: str, seed: int, steps: int, out: Path, threads: int) -> Recipe:
    d = load_recipe(ROOT / "recipes/var-tiny.yaml").model_dump(mode="json")
    d["run"] |= {"name": f"{variant}-s{seed}", "seed": seed, "steps": steps, "output_dir": str(out / "${name}"),
                 "eval_interval": 0, "save_interval": 0, "threads": threads}
    d["logging"] |= {"console": False}
    d["modifiers"] = VARIANTS[variant]
    return Recipe.model_validate(d)


def run(variant: str, seed: int, steps: int, out: Path, threads: int) -> tuple[list[float], VarTrainer, float]:
    t = VarTrainer(recipe_for(variant, seed, steps, out, threads), ROOT, overwrite=True)
    t0 = time.perf_counter()
    t.fit()
    rows = [m for m in read_metrics(t.run_dir) if "reward/mean" in m]
    return [m["reward/mean"] for m in rows], t, time.perf_counter() - t0


@torch.no_grad()
def samples(t: VarTrainer, per_class: int = 4) -> torch.Tensor:
    """Decoded images [classes, per_class, C, H, W] of the trained policy (fixed seed)."""
    torch.manual_seed(1234)
    k = t.model.num_classes
    s = sample_var(t.model, torch.arange(k).repeat_interleave(per_class))
    img = t.model.decode(s.tokens)
    return img.view(k, per_class, *img.shape[1:])


def plot(curves: dict[str, list[list[float]]], grids: dict[str, torch.Tensor], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(curves)
    fig = plt.figure(figsize=(5 + 3.2 * len(names), 4.2))
    ax = fig.add_subplot(1, 1 + len(names), 1)
    for name in names:
        c = torch.tensor(curves[name])
        x = range(1, c.shape[1] + 1)
        ax.plot(x, c.mean(0), label=f"{name} (AUC {c.mean():.3f})")
        ax.fill_between(x, c.min(0).values, c.max(0).values, alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward (batch)")
    ax.set_title(f"tiny VAR, {len(curves[names[0]])} seeds")
    ax.legend(fontsize=7)
    # What the reward sees: the channel-mean brightness of each decoded image; the red square is the class's corner.
    bright = {n: g.mean(2) for n, g in grids.items()}                  # [K,P,H,W]
    lo = min(float(b.min()) for b in bright.values())
    hi = max(float(b.max()) for b in bright.values())
    for i, name in enumerate(names):
        b = bright[name]
        K, P, H, W = b.shape
        canvas = torch.full((K * (H + 2), P * (W + 2)), float("nan"))
        for k in range(K):
            for j in range(P):
                canvas[k * (H + 2):k * (H + 2) + H, j * (W + 2):j * (W + 2) + W] = b[k, j]
        a = fig.add_subplot(1, 1 + len(names), 2 + i)
        a.imshow(canvas.numpy(), cmap="magma", vmin=lo, vmax=hi, interpolation="nearest")
        for k in range(K):
            x0, y0, x1, y1 = corner_box(k, W, W // 4)
            for j in range(P):
                a.add_patch(plt.Rectangle((j * (W + 2) + x0 - 0.5, k * (H + 2) + y0 - 0.5), x1 - x0, y1 - y0,
                                          fill=False, edgecolor="red", linewidth=0.6))
        a.set_title(f"{name}: brightness, seed 0\n(rows = classes, red = rewarded corner)", fontsize=8)
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", nargs="+", default=ORDER, choices=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results")
    args = ap.parse_args()
    curves: dict[str, list[list[float]]] = {v: [] for v in args.variants}
    grids, secs = {}, {v: [] for v in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):          # seed-major: machine-load drift hits every variant alike
            for v in args.variants:
                c, trainer, s = run(v, seed, args.steps, Path(tmp), args.threads)
                curves[v].append(c)
                secs[v].append(s)
                if seed == 0:
                    grids[v] = samples(trainer)
                print(f"seed {seed} {v:18s} mean reward over run {sum(c) / len(c):.3f}  "
                      f"first10 {sum(c[:10]) / 10:.3f} last10 {sum(c[-10:]) / 10:.3f}  {s:.1f}s", flush=True)
    auc = {v: [sum(c) / len(c) for c in curves[v]] for v in args.variants}
    mean = {v: statistics.mean(a) for v, a in auc.items()}
    ordered = [v for v in ORDER if v in auc]
    holds_mean = all(mean[a] < mean[b] for a, b in zip(ordered, ordered[1:]))
    holds_seed = [all(auc[a][s] < auc[b][s] for a, b in zip(ordered, ordered[1:])) for s in range(args.seeds)]
    res = {
        "bench": "var_mp", "recipe": "recipes/var-tiny.yaml", "steps": args.steps, "seeds": args.seeds,
        "metric": "mean of reward/mean over all training steps (AUC / steps), per seed",
        "variants": {v: VARIANTS[v] for v in args.variants},
        "auc_per_seed": auc, "auc_mean": mean,
        "auc_std": {v: statistics.stdev(a) if len(a) > 1 else 0.0 for v, a in auc.items()},
        "last10_mean": {v: statistics.mean(sum(c[-10:]) / 10 for c in curves[v]) for v in args.variants},
        "ordering": " < ".join(ordered), "ordering_holds_on_mean": holds_mean, "ordering_holds_per_seed": holds_seed,
        "seconds_per_run": {v: statistics.mean(s) for v, s in secs.items()},
        "curves": curves,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "var_mp.json").write_text(json.dumps(res, indent=1))
    plot(curves, grids, args.out / "var_mp.png")
    print(json.dumps({k: res[k] for k in ("auc_mean", "ordering", "ordering_holds_on_mean",
                                           "ordering_holds_per_seed")}, indent=1))


if __name__ == "__main__":
    main()
