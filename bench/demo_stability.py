"""How stable is `make demo` (recipes/addition-tiny.yaml: SFT warm start, then GRPO) across seeds and threads?

Two measurements, both on the demo recipe with nothing changed but the named overrides:

    # 1. the SFT curve: greedy held-out accuracy after k SFT steps (one SFT run, snapshots every --every steps;
    #    the schedule is constant after warm-up, so a snapshot at k equals a run of sft.steps=k)
    nice -n 5 python bench/demo_stability.py curve --threads 2 --max-steps 1000 --every 100
    # 2. the demo itself (sft + train, as scripts/demo.sh runs them) for each seed x thread count
    nice -n 5 python bench/demo_stability.py runs --seeds 0 1 2 --threads 1 2

Threads: OMP_NUM_THREADS/MKL_NUM_THREADS and run.threads (which `rltune sft` and `rltune train` apply) are
both set to the count, so a 1-thread run is what a 1-core machine computes. Results go to
bench/results/demo_stability.json (curve under "sft_curve", runs under "runs"), rewritten after every run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/addition-tiny.yaml"
OUT = ROOT / "bench/results/demo_stability.json"
WORK = Path(os.environ.get("DEMO_STABILITY_WORK", ROOT / "runs/demo-stability"))  # two invocations: two folders


def _env(threads: int) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), WANDB_MODE="disabled")


def _save(key: str, value) -> None:
    data = json.loads(OUT.read_text()) if OUT.exists() else {}
    data[key] = value
    data["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "python": platform.python_version()}
    OUT.write_text(json.dumps(data, indent=1) + "\n")


def _eval(ckpt: Path, threads: int) -> float:
    cmd = [sys.executable, "-m", "rltune.cli", "eval", RECIPE, "-c", str(ckpt), f"run.threads={threads}"]
    res = subprocess.run(cmd, cwd=ROOT, env=_env(threads), capture_output=True, text=True, check=True)
    text = res.stdout[res.stdout.index('{"eval/'):]  # the console may wrap the JSON line at its spaces
    return json.loads(" ".join(text.splitlines()))["eval/accuracy"]


def curve(args) -> None:
    """One SFT run of --max-steps; a model snapshot every --every steps, then greedy eval of each."""
    os.environ.update(_env(args.threads))
    from transformers import TrainerCallback

    from rltune.config.load import load_recipe
    from rltune.sft import run_sft

    out = WORK / f"curve-s{args.seed}-t{args.threads}"
    r = load_recipe(ROOT / RECIPE, [f"run.seed={args.seed}", f"run.threads={args.threads}",
                                    f"sft.steps={args.max_steps}", f"sft.output_dir={out}/final"])
    snaps: list[tuple[int, Path]] = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, targs, state, control, model=None, **kw):
            if state.global_step % args.every == 0:
                d = out / f"step{state.global_step}"
                model.save_pretrained(d)
                (kw.get("processing_class") or kw["tokenizer"]).save_pretrained(d)
                snaps.append((state.global_step, d))

    t0 = time.time()
    if args.eval_only:  # snapshots of an earlier (possibly interrupted) curve run
        snaps = sorted(((int(p.name[4:]), p) for p in out.glob("step*") if int(p.name[4:]) >= args.min_step),
                       key=lambda x: x[0])
    else:
        run_sft(r, base_dir=ROOT, callbacks=[Snapshot()])
    sft_s = time.time() - t0
    points = [{"sft_steps": k, "eval_accuracy": _eval(d, args.threads)} for k, d in snaps]
    _save(f"sft_curve_seed{args.seed}_threads{args.threads}",
          {"seed": args.seed, "threads": args.threads, "lr": r.sft.lr, "batch_size": r.sft.batch_size,
           "warmup_steps": r.sft.warmup_steps, "sft_wall_s": None if args.eval_only else round(sft_s, 1),
           "points": points})
    print(json.dumps(points))


def _sft_settings(sft_steps: int | None) -> dict:
    from rltune.config.load import load_recipe

    s = load_recipe(ROOT / RECIPE, [f"sft.steps={sft_steps}"] if sft_steps else []).sft
    return s.model_dump(include={"steps", "stop_at_accuracy", "val_examples", "eval_every", "lr", "warmup_steps"})


def _sft_log(text: str) -> dict:
    """The `SFT done: {...}` line of `rltune sft` (the console may wrap it)."""
    text = " ".join(text[text.index("SFT done: ") + 10:].splitlines())
    return json.loads(text[:text.rindex("}") + 1])


def _one(seed: int, threads: int, sft_steps: int | None) -> dict:
    tag = f"s{seed}-t{threads}"
    ov = [f"run.seed={seed}", f"run.threads={threads}", f"run.output_dir={WORK}/{tag}",
          f"sft.output_dir={WORK}/{tag}-sft"] + ([f"sft.steps={sft_steps}"] if sft_steps else [])
    t0, sft = time.time(), {}
    for cmd in (["sft", RECIPE, *ov], ["train", RECIPE, "--overwrite", *ov]):
        res = subprocess.run([sys.executable, "-m", "rltune.cli", *cmd], cwd=ROOT, env=_env(threads),
                             capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"{tag} {cmd[0]} failed:\n{res.stderr[-3000:]}")
        sft = sft or _sft_log(res.stdout)
    rows = [json.loads(line) for line in (WORK / tag / "metrics.jsonl").read_text().splitlines()]
    acc = [(m["step"], m["eval/accuracy"]) for m in rows if "eval/accuracy" in m]
    before, after = acc[0][1], acc[-1][1]
    return {"seed": seed, "threads": threads, "sft_steps": sft["sft/steps"],
            "sft_val_accuracy": sft.get("sft/val_accuracy"), "before": before, "after": after,
            "gain": round(after - before, 4), "wall_s": round(time.time() - t0, 1)}


def runs(args) -> None:
    """Each (seed, threads) demo once; 1-thread runs go --parallel-1t at a time, 2-thread runs alone."""
    old = json.loads(OUT.read_text()).get("runs", {}) if OUT.exists() else {}
    settings = _sft_settings(args.sft_steps)
    results: list[dict] = old.get("results", []) if old.get("sft") == settings else []

    def record(res: dict) -> None:  # merged with other invocations' runs with the same settings (re-read: two
        # invocations, e.g. the 1- and the 2-thread runs, may write at the same time)
        now = json.loads(OUT.read_text()).get("runs", {}) if OUT.exists() else {}
        mine = {(r["seed"], r["threads"]) for r in [*results, res]}
        results[:0] = [r for r in (now.get("results", []) if now.get("sft") == settings else [])
                       if (r["seed"], r["threads"]) not in mine]
        results.append(res)
        gains = [r["gain"] for r in results]
        _save("runs", {"sft": settings, "results": results,
                       "gain_min": min(gains), "gain_max": max(gains)})
        print(json.dumps(res), flush=True)

    for t in args.threads:
        jobs = [(s, t) for s in args.seeds]
        width = args.parallel_1t if t == 1 else 1
        with ThreadPoolExecutor(width) as ex:
            for res in ex.map(lambda j: _one(j[0], j[1], args.sft_steps), jobs):
                record(res)


def gain_of(run_dir: Path) -> tuple[float, float]:
    """(before, after): greedy held-out accuracy at the run's first and last evaluation."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    acc = [m["eval/accuracy"] for m in rows if "eval/accuracy" in m]
    return acc[0], acc[-1]


# The stated range widens the measured span by two standard errors of a difference of two accuracies on the
# 500 held-out problems (sqrt(2 * 0.25 / 500) = 0.032): a handful of runs cannot span every machine's outcome.
MARGIN = 0.06


def stated_range() -> tuple[float, float, list[dict]]:
    """(low, high, runs): the gain range the README states, from the measured runs, rounded outwards."""
    runs = json.loads(OUT.read_text())["runs"]
    lo, hi = runs["gain_min"] - MARGIN, runs["gain_max"] + MARGIN
    return math.floor(lo * 100) / 100, math.ceil(hi * 100) / 100, runs["results"]


def check(args) -> None:
    """The demo's last line: is this run's gain inside the range the README states?"""
    before, after = gain_of(args.run_dir)
    lo, hi, res = stated_range()
    where = "within" if lo <= after - before <= hi else "OUTSIDE"
    print(f"gain {after - before:+.3f} (before {before:.3f} -> after {after:.3f}): {where} the README's range "
          f"[{lo:+.2f}, {hi:+.2f}] (measured over {len(res)} runs: seeds {sorted({r['seed'] for r in res})} x "
          f"threads {sorted({r['threads'] for r in res})}, widened by {MARGIN}; bench/results/demo_stability.json)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("curve")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--max-steps", type=int, default=1000)
    c.add_argument("--every", type=int, default=100)
    c.add_argument("--eval-only", action="store_true", help="Evaluate the snapshots an earlier run left.")
    c.add_argument("--min-step", type=int, default=0, help="With --eval-only: skip earlier snapshots.")
    r = sub.add_parser("runs")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    r.add_argument("--sft-steps", type=int, default=None, help="Override sft.steps (default: the recipe's).")
    r.add_argument("--parallel-1t", type=int, default=2)
    k = sub.add_parser("check")
    k.add_argument("run_dir", type=Path)
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    {"curve": curve, "runs": runs, "check": check}[args.cmd](args)


if __name__ == "__main__":
    main()
