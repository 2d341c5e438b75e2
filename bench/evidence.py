"""Evidence harness (issue 17): does each built-in modifier move its metric in the direction its paper claims,
in a setting that matches the paper's conditions? Paired runs: for every seed the baseline and each method arm
start from the same init (and the same SFT warm start), see the same prompts in the same order and differ only
in `modifiers:`. Settings (below, `SETTINGS`) are fixed here before any run; nothing is tuned per seed.

  redit      builtin:chain (3 two-digit terms, worked running sums), weak SFT warm start, sparse exact match on
             the final answer, G=4: many flat groups (arXiv 2506.18631's condition). Held-out greedy accuracy;
             steps to the baseline's final accuracy (same seed) and accuracy at equal steps.
  empg       guess-the-number 1..32 in 6 turns (sparse terminal reward), EMPG with `segment: turn` (arXiv
             2509.09265's long-horizon agents). Held-out sampled success (32 secrets x 16 episodes, T=1).
  adhint     builtin:chain with its worked solutions as the hints (a hint = the first running sums, a real
             reasoning prefix; arXiv 2512.13095). GRPO vs ADHint vs fixed-ratio hints (w = 0.5 for every
             prompt). Held-out greedy accuracy of unhinted generations.
  var        var-tiny; held-out evaluation (test prompts, fixed sampling seed), and the mask from a detector of
             the brightest window of the decoded image (rewards/bright_window.py), not from the reward's box.
             vanilla vs +reweight vs +mask vs +VMR (arXiv 2601.02256). Held-out reward at the end.
  diffusion  the tiny DDIM toy (redness): AlignProp vs Direct-Align vs DDPO (arXiv 2310.03739, 2509.06942,
             2305.13301) under the same budget of denoiser evaluations (image-evals, counted), held-out prompts
             with fixed noise, steps (in image-evals) to a target below the 2.0 saturation ceiling.

    python bench/evidence.py                   # the whole table -> bench/results/evidence.json + evidence_*.png
    python bench/evidence.py --quick           # fewer steps and seeds (marked quick in the JSON)
    python bench/evidence.py --only redit --jobs 2
    python bench/evidence.py --write-docs      # render the Evidence table of docs/modifiers.md from the JSON

The modifiers run through recipe keys only, so the fixes of issue 17 part 1 (DDPO's sampling-time old
log-probs and per-prompt stats, EMPG's per-turn default, ADHint's prior from the trained group) are picked up
by rerunning this script; no change here is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from evidence_report import plot_method, summarize, write_docs  # noqa: E402

TMP = ROOT / "bench/results/tmp/evidence"
OUT = ROOT / "bench/results/evidence.json"

# ------------------------------------------------------------------------------------------- the settings
CHAIN = {"terms": 3, "digits": 2}
CHAIN_SFT_STEPS = 450           # a weak warm start: low held-out accuracy, so many groups are flat (all wrong)
CHAIN_LR = 1.0e-4               # 5x addition-tiny's 2e-5: from a 4% start, 2e-5 barely moves in 100 steps (measured)
GUESS = {"low": 1, "high": 32, "max_turns": 6, "expert": "random"}
REDIT = {"use": "redit", "args": {"sigma": 0.05, "distribution": "gaussian", "schedule": "constant"}}
ADHINT_ARGS = {"n_hint": 4, "solution_column": "solution", "base_norm": "union", "lam": 1.0,
               "cgm": "ratio", "selective_mask": True}
DETECTOR_MASK = {"use": "var_mask", "args": {"source": "saliency", "saliency_q": 0.25, "mode": "max", "alpha": 0.7}}


def _chain(d: dict, quick: bool, G: int) -> None:
    """addition-tiny's model and optimiser on builtin:chain, final-answer exact match, G samples per prompt."""
    d["data"] |= {"source": "builtin:chain", "task_args": dict(CHAIN), "eval_size": 200 if quick else 500}
    d["rollout"] |= {"samples_per_prompt": G, "max_new_tokens": 12}
    d["train"] |= {"lr": CHAIN_LR}
    d["rewards"] = [{"use": "exact_match", "args": {"column": "answer", "after": ","}}]
    d["sft"] |= {"steps": CHAIN_SFT_STEPS, "warmup_steps": 50, "output_dir": str(TMP / f"sft-chain-{CHAIN_SFT_STEPS}")}


def _guess(d: dict, quick: bool) -> None:
    d["data"] |= {"task_args": dict(GUESS)}
    d["model"]["tiny"] |= {"max_position_embeddings": 128}
    d["env"] |= {"args": {"low": GUESS["low"], "high": GUESS["high"]}, "max_turns": GUESS["max_turns"],
                 "max_total_tokens": 80}
    d["sft"] |= {"output_dir": str(TMP / "sft-guess32")}


def _var(d: dict, quick: bool) -> None:
    d["rewards"] = [{"use": "region_brightness", "args": {"column": "region"}},
                    # weight 0: only its detection map is used (as `saliency`), never its score
                    {"use": "rltune_rewards.bright_window:BrightWindow", "name": "detector", "weight": 0.0,
                     "args": {"size": 8}}]


def _diffusion(d: dict, quick: bool) -> None:
    # G = 4 images per prompt so DDPO's per-prompt advantages exist; AlignProp and Direct-Align see the same batch
    d["rollout"] |= {"prompts_per_step": 1, "samples_per_prompt": 4}


@dataclass(frozen=True)
class Setting:
    recipe: str
    desc: str
    edit: Callable[[dict, bool], None]
    arms: dict[str, list[dict]]           # arm -> `modifiers:`; the first arm is the baseline
    steps: tuple[int, int]                # (full, quick)
    seeds: tuple[int, int]
    eval_interval: tuple[int, int]
    metric: str
    paper: str
    target: float | None = None           # fixed target for steps-to-target (None: the baseline's final value)
    budget: tuple[int, int] | None = None  # diffusion: image-evals per run (full, quick); steps follow per arm
    pairs: tuple = ()                      # (arm, reference arm) comparisons; () = every arm vs the baseline
    extra: dict = field(default_factory=dict)


SETTINGS: dict[str, Setting] = {
    "redit": Setting(
        "recipes/addition-tiny.yaml",
        f"builtin:chain {CHAIN} (answer after the running sums), SFT {CHAIN_SFT_STEPS} steps (weak), exact match, "
        "B=16 x G=4",
        lambda d, q: _chain(d, q, G=4), {"grpo": [], "redit": [REDIT]}, (60, 60), (5, 3), (10, 10),
        "held-out greedy accuracy", "2506.18631: GRPO's accuracy in ~10% of the steps, ~+4% at equal steps"),
    "empg": Setting(
        "recipes/agent-guess-tiny.yaml",
        f"guess-the-number {GUESS['low']}..{GUESS['high']} in {GUESS['max_turns']} turns, terminal reward, "
        "SFT on a random expert, B=8 x G=8",
        _guess, {"grpo": [], "empg": [{"use": "empg", "args": {"segment": "turn"}}]}, (100, 25), (5, 2), (0, 0),
        "held-out sampled success (32 secrets x 16 episodes, T=1)",
        "2509.09265: +2-8 points on long-horizon agents with sparse terminal reward"),
    "adhint": Setting(
        "recipes/addition-tiny.yaml",
        f"builtin:chain {CHAIN}, hint = a prefix of the worked running sums, SFT {CHAIN_SFT_STEPS} steps, B=16 x G=8",
        lambda d, q: _chain(d, q, G=8),
        {"grpo": [], "adhint": [{"use": "adhint", "args": {**ADHINT_ARGS, "w_min": 0.0, "w_max": 0.8, "delta": 0.05}}],
         "fixed_hint": [{"use": "adhint", "args": {**ADHINT_ARGS, "w_min": 0.5, "w_max": 0.5, "delta": 0.0,
                                                   "skip_if_diff_le": -1.0, "lam": 0.0, "cgm": "none"}}]},
        (100, 30), (5, 2), (10, 10), "held-out greedy accuracy of unhinted generations",
        "2512.13095: better pass@1 than GRPO and fixed-ratio hint baselines",
        pairs=(("adhint", "grpo"), ("fixed_hint", "grpo"), ("adhint", "fixed_hint"))),
    "var": Setting(
        "recipes/var-tiny.yaml", "var-tiny (4 classes, corner-brightness reward, G=16); mask from a brightest-window "
        "detector on the decoded image", _var,
        {"vanilla": [], "reweight": [{"use": "scale_reweight", "args": {"alpha": 0.7}}],
         "reweight+mask": [DETECTOR_MASK],
         "reweight+mask+vmr": [DETECTOR_MASK, {"use": "var_vmr", "args": {"split": 2, "k": 2}}]},
        (80, 40), (5, 3), (10, 10), "held-out reward (test prompts x 16 samples, fixed sampling seed)",
        "2601.02256: vanilla < +reweight < +mask (Mask Propagation), VMR helps further",
        pairs=(("reweight", "vanilla"), ("reweight+mask", "reweight"), ("reweight+mask+vmr", "reweight+mask"),
               ("reweight+mask", "vanilla"))),
    "diffusion": Setting(
        "recipes/diffusion-tiny-alignprop.yaml", "tiny 16x16 UNet, DDIM 10 steps eta 1, redness reward, 1 prompt x 4 "
        "images per step, LoRA; equal budget of denoiser image-evals", _diffusion,
        {"ddpo": [{"use": "ddpo", "args": {}}],
         "alignprop": [{"use": "alignprop", "args": {"truncation": "uniform", "loss": "neg", "loss_coeff": 1.0}}],
         "direct_align": [{"use": "direct_align", "args": {"srp": False, "use_inversion": False}}]},
        (0, 0), (3, 2), (5, 5), "held-out redness (held-out prompts, fixed noise, eta 0)",
        "2310.03739 / 2509.06942: reward backprop reaches a reward far faster than DDPO's policy gradient",
        target=1.0, budget=(2400, 800)),
}
# image-evals per training step per arm, counted by count_evals() on 4-step runs of this code: 4 images x (10
# sampling calls + DDPO's 9 stochastic steps / AlignProp's K ~ U{1..9} re-run with grad, 5.0 expected, 4.0 in
# the probe / Direct-Align's 1 recovery call). Each run records its own count, so a changed cost shows in the JSON.
DIFFUSION_EVALS_PER_STEP = {"ddpo": 76, "alignprop": 56, "direct_align": 44}


# ----------------------------------------------------------------------------------------------- one run
def recipe_for(method: str, arm: str, seed: int, quick: bool):
    from rltune.config.load import load_recipe
    from rltune.config.schema import Recipe

    s = SETTINGS[method]
    d = load_recipe(ROOT / s.recipe).model_dump(mode="json")
    s.edit(d, quick)
    steps = arm_steps(method, arm, quick)
    ev = s.eval_interval[quick]
    d["run"] |= {"name": f"{method}-{arm}-s{seed}", "seed": seed, "steps": steps, "threads": 1,
                 "output_dir": str(TMP / "runs" / f"{method}-{arm}-s{seed}"), "save_interval": 0,
                 "eval_interval": (max(1, steps // 5) if method == "diffusion" else ev) or None}
    d["logging"] |= {"console": False}
    d["modifiers"] = s.arms[arm]
    return Recipe.model_validate(d)


def arm_steps(method: str, arm: str, quick: bool) -> int:
    s = SETTINGS[method]
    if s.budget is None:
        return s.steps[quick]
    return max(1, s.budget[quick] // DIFFUSION_EVALS_PER_STEP[arm])


def ensure_sft(method: str) -> None:
    """Build the shared SFT warm start of a text setting once (cached under bench/results/tmp/evidence)."""
    from rltune.sft import run_sft

    if method not in ("redit", "adhint", "empg"):
        return
    r = recipe_for(method, next(iter(SETTINGS[method].arms)), 0, False)
    if not (Path(r.sft.output_dir) / "config.json").is_file():
        print(f"[{method}] SFT warm start ({r.sft.steps} steps) -> {r.sft.output_dir}", flush=True)
        run_sft(r, base_dir=ROOT)


def guess_success(tr, n: int, seed: int) -> float:
    """Mean return of n episodes at T=1 for every held-out secret (the EMPG metric)."""
    import torch

    from rltune.data.batch import PromptBatch
    from rltune.envs.guess_number import guess_number_rows
    from rltune.rollout.base import SamplingParams

    rows = guess_number_rows("test", low=GUESS["low"], high=GUESS["high"], max_turns=GUESS["max_turns"])
    pb = PromptBatch(prompts=[r["prompt"] for r in rows], meta={k: [r[k] for r in rows] for k in rows[0]})
    b = tr.rollout.generate(pb, SamplingParams(n=n, temperature=1.0, seed=seed))
    return float(torch.tensor(b.meta["env_return"]).mean())


def count_evals(tr) -> dict:
    """Count denoiser image-evals (batch rows per call) during training steps, not during evaluation."""
    box = {"n": 0, "on": True}
    tr.model.denoiser.register_forward_hook(
        lambda m, args, out: box.__setitem__("n", box["n"] + (args[0].shape[0] if box["on"] else 0)))
    orig = tr.evaluate

    def evaluate():
        box["on"] = False
        try:
            return orig()
        finally:
            box["on"] = True

    tr.evaluate = evaluate
    return box


def run_one(method: str, arm: str, seed: int, quick: bool) -> dict:
    import torch

    from rltune.logging import read_metrics
    from rltune.trainer import build_trainer

    torch.set_num_threads(1)
    r = recipe_for(method, arm, seed, quick)
    tr = build_trainer(r, ROOT, overwrite=True)
    box = count_evals(tr) if method == "diffusion" else None
    out: dict = {"method": method, "arm": arm, "seed": seed, "steps": r.run.steps}
    t0 = time.perf_counter()
    if method == "empg":
        out["start"] = guess_success(tr, 16, 10_000 + seed)
    tr.fit()
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    m = read_metrics(tr.run_dir)
    out["curve"] = [(x["step"], x["eval/accuracy"]) for x in m if "eval/accuracy" in x]
    out["train_reward"] = [x["reward/mean"] for x in m if "reward/mean" in x]
    if method == "empg":
        out["final"] = guess_success(tr, 16, 20_000 + seed)
        out["curve"] = [(0, out["start"]), (r.run.steps, out["final"])]
    else:
        out["final"] = out["curve"][-1][1]
    if box is not None:
        out["image_evals"] = box["n"]
        out["curve"] = [(s * box["n"] // r.run.steps, v) for s, v in out["curve"]]   # x axis: image-evals
    flat = [x["reward/flat_group_frac"] for x in m if "reward/flat_group_frac" in x]
    if flat:
        out["flat_group_frac"] = sum(flat) / len(flat)
    out["s_per_step"] = round(out["wall_s"] / max(1, r.run.steps), 3)
    return out


def _job(args: tuple) -> dict:
    try:
        return run_one(*args)
    except Exception as e:  # noqa: BLE001 - one failed run is recorded, not fatal to the table
        return {"method": args[0], "arm": args[1], "seed": args[2], "error": f"{type(e).__name__}: {e}"}


# ---------------------------------------------------------------------------------------------------- main
def run_method(method: str, quick: bool, jobs: int, res: dict, out_dir: Path) -> None:
    s = SETTINGS[method]
    t0 = time.perf_counter()
    ensure_sft(method)
    seeds = list(range(s.seeds[quick]))
    todo = [(method, arm, seed, quick) for seed in seeds for arm in s.arms]   # seed-major: load drift hits all arms
    if jobs > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as ex:
            runs = list(ex.map(_job, todo))
    else:
        runs = []
        for job in todo:
            runs.append(_job(job))
            r = runs[-1]
            print(f"[{method}] {r['arm']:12s} seed {r['seed']}: " + (r.get("error") or
                  f"{r['curve'][0][1]:.3f} -> {r['final']:.3f} ({r['wall_s']:.0f} s, {r['s_per_step']} s/step)"),
                  flush=True)
    res["methods"][method] = summarize(method, s, seeds, runs, quick)
    res["methods"][method]["wall_s"] = round(time.perf_counter() - t0, 1)
    res["methods"][method]["load_avg_end"] = round(os.getloadavg()[0], 2)
    plot_method(method, res["methods"][method], out_dir / f"evidence_{method}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer steps and seeds (marked quick in the JSON)")
    ap.add_argument("--only", nargs="+", choices=list(SETTINGS), help="run only these methods (others are kept)")
    ap.add_argument("--jobs", type=int, default=1, help="run seeds as separate processes, this many at a time")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--write-docs", action="store_true", help="render docs/modifiers.md's Evidence table and exit")
    a = ap.parse_args()
    if a.write_docs:
        write_docs(json.loads(a.out.read_text()), ROOT / "docs/modifiers.md")
        print(f"docs/modifiers.md: Evidence table rendered from {a.out}")
        return
    if a.jobs < 1 or a.jobs > 2:
        ap.error("--jobs must be 1 or 2 (the bench is sized for a 2-core CPU)")
    res = json.loads(a.out.read_text()) if a.only and a.out.is_file() else {"methods": {}}
    res |= {"quick": a.quick, "command": "python bench/evidence.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, threads=1 per run, jobs={a.jobs}",
            "load_avg_start": round(os.getloadavg()[0], 2)}
    t0 = time.perf_counter()
    for method in a.only or list(SETTINGS):
        run_method(method, a.quick, a.jobs, res, a.out.parent)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1))
        m = res["methods"][method]
        print(f"[{method}] done in {m['wall_s']:.0f} s: " + "; ".join(
            f"{c['arm']} - {c['vs']}: {c['mean_diff']:+.3f} " + (f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
                                                                 if c["ci95"] else "(1 seed)")
            for c in m["comparisons"]), flush=True)


if __name__ == "__main__":
    main()
