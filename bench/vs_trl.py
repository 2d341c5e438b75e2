"""rltune vs TRL GRPOTrainer, back to back, on the tiny addition task (CPU).

Both trainers start from the same SFT folder (`runs/addition-tiny-sft`, a plain HF model + tokenizer), train on
the same prompts in the same order (builtin addition, train_seed 142, shuffle false ==
`task.train_problems(3, steps*16, seed=142)` of the TRL baseline; checked below), 16 prompts x 8 samples,
8 new tokens, lr 2e-5 constant, token-mean loss (TRL loss_type=dapo), beta/kl 0, fp32, the same torch threads.

The peer is the TRL baseline script, invoked as a subprocess from where it lives (`--trl-baseline`, default
`../shared/bench/trl_baseline` relative to the repo root). rltune runs as `python -m rltune.cli train ...` in a
subprocess. Each child is reaped with os.wait4, so its peak RSS and CPU time are its own; a sampler thread
reads /proc/<pid>/stat to get the CPU utilisation of the training window only (imports/eval excluded).

Ratios (rltune / TRL) are refused (`"ratios": null` + reason) when the box was not quiet: 1-min load average
> --max-load before a run, or either run's training-window CPU utilisation < 0.75 x threads.

    python bench/vs_trl.py --steps 100 --threads 2      # -> bench/results/vs_trl.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipes/addition-tiny.yaml"
PROMPTS_PER_STEP, SAMPLES, MAX_NEW, LR = 16, 8, 8, 2e-5
CLK = os.sysconf("SC_CLK_TCK")
ENV_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}


# ----------------------------------------------------------------------------------------------- helpers
def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def proc_cpu_s(pid: int) -> float | None:
    """utime+stime (+ reaped children) of a live process, seconds."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / CLK  # fields 14-17 of stat(5)


def wait_quiet(max_load: float, max_wait: float) -> float:
    """Wait (up to max_wait s) for the 1-min load average to fall to max_load; return the load seen last."""
    t0 = time.time()
    while True:
        la = os.getloadavg()[0]
        if la <= max_load or time.time() - t0 > max_wait:
            return round(la, 2)
        time.sleep(5)


class Sampler(threading.Thread):
    """Samples (wall, cpu_s, progress) of a child every `dt` s; progress() is a caller-supplied counter."""

    def __init__(self, pid: int, progress, dt: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.progress, self.dt, self.rows, self.stop = pid, progress, dt, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            c = proc_cpu_s(self.pid)
            if c is not None:
                self.rows.append((time.perf_counter(), c, self.progress()))
            time.sleep(self.dt)

    def window_util(self, lo: int, hi: int) -> dict | None:
        """CPU/wall between the first samples where progress reached lo and hi."""
        a = next((r for r in self.rows if r[2] >= lo), None)
        b = next((r for r in self.rows if r[2] >= hi), None)
        if a is None or b is None or b[0] - a[0] < 1.0:
            return None
        return {"cpu_utilisation": round((b[1] - a[1]) / (b[0] - a[0]), 3), "window_s": round(b[0] - a[0], 2),
                "progress_window": [lo, hi]}


def run_child(cmd: list[str], env: dict, log: Path, progress) -> dict:
    """Run cmd, sample its CPU, reap it with wait4: wall, user+sys, peak RSS of that child alone."""
    load_before = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        s = Sampler(p.pid, progress)
        s.start()
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    s.stop.set()
    s.join()
    if p.returncode != 0:
        sys.exit(f"{cmd[:3]} failed (rc {p.returncode}); see {log}:\n" + log.read_text()[-3000:])
    cpu = ru.ru_utime + ru.ru_stime
    return {"load_before": load_before, "process_wall_s": round(wall, 2), "process_cpu_s": round(cpu, 2),
            "process_cpu_utilisation": round(cpu / wall, 3), "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),
            "_sampler": s, "log": str(log)}


def matmul_peak(threads: int, n: int = 1024, reps: int = 40) -> dict:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(5):
        a @ b
    best = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        best.append(time.perf_counter() - t0)
    fl = 2 * n**3 * reps / min(best)
    return {"gflops": round(fl / 1e9, 1), "shape": [n, n], "dtype": "float32", "threads": threads,
            "torch": torch.__version__}


def count_params(model: Path) -> int:
    import math

    from safetensors import safe_open

    with safe_open(str(model / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


# ----------------------------------------------------------------------------------------------- prompts
def check_prompts(trl_dir: Path, steps: int, model: Path) -> dict:
    """rltune's PromptLoader stream for this recipe vs the TRL script's task.train_problems(3, steps*16, 142)."""
    code = ("import json,sys,task; p=task.train_problems(3,int(sys.argv[1]),seed=142); "
            "print(json.dumps([task.prompt_of(a,b) for a,b in p]))")
    trl = json.loads(subprocess.run([sys.executable, "-c", code, str(steps * PROMPTS_PER_STEP)], cwd=trl_dir,
                                    check=True, capture_output=True, text=True).stdout)
    from rltune.config.load import load_recipe
    from rltune.data.prompts import PromptLoader, load_rows
    from transformers import AutoTokenizer

    r = load_recipe(ROOT / RECIPE, [f"sft.output_dir={model}"])
    tok = AutoTokenizer.from_pretrained(model)
    loader = PromptLoader(load_rows(r.data, r.data.split, base_dir=ROOT), r.data, tok, r.run.seed)
    ours = [p for _ in range(steps) for p in loader.next(PROMPTS_PER_STEP).prompts]
    ids_equal = all(tok(a)["input_ids"] == tok(b)["input_ids"] for a, b in zip(ours[:16], trl[:16]))
    return {"n_compared": len(trl), "all_equal": ours == trl, "first_5_rltune": ours[:5], "first_5_trl": trl[:5],
            "first_16_token_ids_equal": ids_equal, "data_shuffle": r.data.shuffle,
            "mean_prompt_tokens": round(statistics.mean(len(tok(p)["input_ids"]) for p in ours), 3)}


# ----------------------------------------------------------------------------------------------- runs
def run_trl(a, trl_dir: Path, model: Path, work: Path, env: dict) -> dict:
    out_json = work / "trl.json"
    out_json.unlink(missing_ok=True)
    log = work / "trl.log"
    cmd = [sys.executable, str(trl_dir / "trl_grpo.py"), "--model", str(model), "--digits", "3", "--steps",
           str(a.steps), "--prompts-per-step", str(PROMPTS_PER_STEP), "--num-generations", str(SAMPLES),
           "--max-completion-length", str(MAX_NEW), "--lr", str(LR), "--beta", "0", "--threads", str(a.threads),
           "--output-dir", str(work / "trl_out"), "--out-json", str(out_json)]
    log.write_text("")
    # TRL logs one dict per step to stdout (logging_steps=1): count "'reward':" lines as progress.
    prog = lambda: log.read_text(errors="ignore").count("'reward':")  # noqa: E731
    proc = run_child(cmd, env, log, prog)
    j = json.loads(out_json.read_text())
    t, sw = j["timing"], j["step_wall_s"]
    ph = t["phase_s"]
    wall = t["train_wall_s"]
    gen, prep, loss = ph.get("transformers.generate", 0.0), ph.get("_prepare_inputs", 0.0), ph.get("compute_loss", 0.0)
    win = proc["_sampler"].window_util(2, a.steps - 1)
    return {
        "cmd": " ".join(cmd[1:]),
        "s_per_step_median": round(statistics.median(sw), 4), "s_per_step_p90": round(pct(sw, 0.9), 4),
        "s_per_step_mean": round(statistics.mean(sw), 4), "train_wall_s": wall,
        "completion_tokens": t["completion_tokens"],
        "completion_tok_per_s": round(t["completion_tokens"] / sum(sw), 1),
        "phases_s": {"rollout: generate": round(gen, 2), "rollout: tokenize/reward/advantages (other prep)":
                     round(prep - gen, 2), "loss forward (compute_loss: logps+entropy)": round(loss, 2),
                     "backward + optimizer + Trainer overhead": round(wall - prep - loss, 2)},
        "phases_raw_s": ph,
        "cpu_utilisation_train": t["cpu_utilisation"],  # TRL's own (train() window, RUSAGE_SELF)
        "cpu_utilisation_train_sampled": win,
        "greedy_acc_before": j["quality"]["greedy_acc_before"], "greedy_acc_after": j["quality"]["greedy_acc_after"],
        "train_reward_first": j["quality"]["train_reward_first"], "train_reward_last": j["quality"]["train_reward_last"],
        "versions": j["versions"],
        **{k: v for k, v in proc.items() if k != "_sampler"},
    }


def run_rltune(a, model: Path, work: Path, env: dict) -> dict:
    run_dir = work / "rltune"
    metrics = run_dir / "metrics.jsonl"
    log = work / "rltune.log"
    cmd = [sys.executable, "-m", "rltune.cli", "train", RECIPE, f"sft.output_dir={model}", f"run.steps={a.steps}",
           f"run.threads={a.threads}", "run.eval_interval=null", "run.save_interval=0", f"run.output_dir={run_dir}",
           "--overwrite"]

    def prog():  # steps completed = metrics rows with time/step
        try:
            return metrics.read_text().count('"time/step"')
        except OSError:
            return 0

    # A previous run's metrics would count as progress before --overwrite clears them (and void the CPU window).
    shutil.rmtree(run_dir, ignore_errors=True)
    proc = run_child(cmd, env, log, prog)
    rows = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()]
    steps = [r for r in rows if "time/step" in r]
    evals = [r for r in rows if "eval/accuracy" in r]
    sw = [r["time/step"] for r in steps]
    keys = sorted({k for r in steps for k in r if k.startswith("time/") and k != "time/step"
                   and k != "time/eval" and not k.startswith("time/reward/")})
    phases = {k: round(sum(r.get(k, 0.0) for r in steps), 2) for k in keys}
    phases["untimed (metrics, bookkeeping)"] = round(sum(sw) - sum(phases.values()), 2)
    toks = sum(r["perf/tokens"] for r in steps)
    win = proc["_sampler"].window_util(2, a.steps - 1)
    k = max(1, len(steps) // 5)
    return {
        "cmd": " ".join(cmd[1:]),
        "s_per_step_median": round(statistics.median(sw), 4), "s_per_step_p90": round(pct(sw, 0.9), 4),
        "s_per_step_mean": round(statistics.mean(sw), 4), "train_wall_s": round(sum(sw), 2),
        "completion_tokens": toks, "completion_tok_per_s": round(toks / sum(sw), 1),
        "phases_s": phases,
        "cpu_utilisation_train": win["cpu_utilisation"] if win else None,
        "cpu_utilisation_train_sampled": win,
        "greedy_acc_before": evals[0]["eval/accuracy"] if evals else None,
        "greedy_acc_after": evals[-1]["eval/accuracy"] if len(evals) > 1 else None,
        "train_reward_first": round(statistics.mean(r["reward/mean"] for r in steps[:k]), 4),
        "train_reward_last": round(statistics.mean(r["reward/mean"] for r in steps[-k:]), 4),
        "update_s": round(sum(r.get("time/update", 0.0) for r in steps), 2),
        "first_step_prompts": sorted({s["prompt"] for s in json.loads(
            (run_dir / "samples.jsonl").read_text().splitlines()[0])["samples"]}) if (run_dir / "samples.jsonl").is_file()
        else None,
        **{k_: v for k_, v in proc.items() if k_ != "_sampler"},
    }


# ----------------------------------------------------------------------------------------------- report
def write_md(res: dict, out: Path) -> None:
    t, r, ra = res["trl"], res["rltune"], res["ratios"]
    f = lambda x, fmt=".3f": "—" if x is None else format(x, fmt)  # noqa: E731
    rat = lambda k: "—" if not ra else f"{ra[k]:.2f}"  # noqa: E731
    rows = [("s/step median", "s_per_step_median", ".3f"), ("s/step p90", "s_per_step_p90", ".3f"),
            ("s/step mean", "s_per_step_mean", ".3f"), ("completion tok/s", "completion_tok_per_s", ".0f"),
            ("peak RSS MB (whole process)", "peak_rss_mb", ".0f"),
            ("CPU util, training window", "cpu_utilisation_train", ".2f"),
            ("CPU util, whole process", "process_cpu_utilisation", ".2f"),
            ("greedy acc before", "greedy_acc_before", ".3f"), ("greedy acc after", "greedy_acc_after", ".3f"),
            ("train reward first/last 20%", None, None), ("load avg before run", "load_before", ".2f"),
            ("process wall s", "process_wall_s", ".1f")]
    s = res["settings"]
    L = [f"# rltune vs TRL GRPOTrainer ({s['steps']} steps, threads {s['threads']})", "",
         f"{res['machine']}; same SFT model `{s['model']}`, same prompts in order (verified: "
         f"{res['prompts']['all_equal']}), {PROMPTS_PER_STEP} prompts × {SAMPLES} samples, {MAX_NEW} new tokens, "
         f"lr {LR}, token-mean loss (TRL dapo), beta 0, fp32. Run back to back in one invocation "
         f"({res['started']}).", "",
         "| metric | TRL 1.16 | rltune | rltune / TRL |", "|---|---|---|---|"]
    for name, key, fmt in rows:
        if key is None:
            L.append(f"| {name} | {f(t['train_reward_first'])} → {f(t['train_reward_last'])} | "
                     f"{f(r['train_reward_first'])} → {f(r['train_reward_last'])} | |")
            continue
        ratio = rat(key) if ra and key in ra else ""
        L.append(f"| {name} | {f(t[key], fmt)} | {f(r[key], fmt)} | {ratio} |")
    L += ["", "Ratios: " + ("reported." if ra else f"**refused** — {res['ratios_refused_reason']}"), "",
          "## Where the time goes (seconds summed over the run's steps)", "", "| TRL phase | s | share |",
          "|---|---|---|"]
    tw = sum(t["phases_s"].values())
    L += [f"| {k} | {v:.2f} | {v / tw:.0%} |" for k, v in t["phases_s"].items()]
    L += ["", "| rltune phase | s | share |", "|---|---|---|"]
    rw = sum(r["phases_s"].values())
    L += [f"| {k} | {v:.2f} | {v / rw:.0%} |" for k, v in r["phases_s"].items()]
    m = res["flops"]
    L += ["", "## FLOP/s", "",
          f"matmul peak (fp32 1024², {s['threads']} threads, measured in this invocation): **{m['matmul_peak_gflops']} "
          f"GFLOP/s**. rltune training FLOP/s = 6 × {m['params']:,} params × trained tokens / Σ time/update "
          f"({r['update_s']} s): completion tokens only {m['rltune_train_gflops_completion']} GFLOP/s "
          f"(MFU {m['rltune_mfu_completion']:.1%}); prompt+completion tokens {m['rltune_train_gflops_all']} GFLOP/s "
          f"(MFU {m['rltune_mfu_all']:.1%})."]
    (out / "vs_trl.md").write_text("\n".join(L) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="runs/addition-tiny-sft", help="SFT folder (HF model + tokenizer)")
    ap.add_argument("--trl-baseline", default=str(ROOT.parent / "shared/bench/trl_baseline"))
    ap.add_argument("--out", default=str(ROOT / "bench/results"))
    ap.add_argument("--work", default=str(ROOT / "runs/bench-vs-trl"))
    ap.add_argument("--max-load", type=float, default=0.5, help="refuse ratios if 1-min load > this before a run")
    ap.add_argument("--max-wait", type=float, default=180, help="seconds to wait for the load to settle per run")
    ap.add_argument("--order", choices=["trl-first", "rltune-first"], default="trl-first")
    a = ap.parse_args()
    model = (ROOT / a.model).resolve()
    trl_dir = (ROOT / a.trl_baseline).resolve()
    work, out = Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if not (model / "config.json").is_file():
        sys.exit(f"no model at {model}: run `rltune sft {RECIPE}` first")
    if not (trl_dir / "trl_grpo.py").is_file():
        sys.exit(f"no TRL baseline at {trl_dir} (--trl-baseline)")
    env = dict(os.environ, **ENV_OFFLINE, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               PYTHONPATH=str(ROOT))

    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    prompts = check_prompts(trl_dir, a.steps, model)
    print(f"prompts equal: {prompts['all_equal']}  first: {prompts['first_5_rltune']} vs {prompts['first_5_trl']}")
    if not prompts["all_equal"]:
        sys.exit("prompt streams differ; refusing to benchmark")
    params = count_params(model)

    print(f"waiting for load <= {a.max_load} ...", flush=True)
    wait_quiet(a.max_load, a.max_wait)
    peak = matmul_peak(a.threads)
    print(f"matmul peak: {peak['gflops']} GFLOP/s", flush=True)

    runs = {}
    order = ["trl", "rltune"] if a.order == "trl-first" else ["rltune", "trl"]
    for name in order:
        la = wait_quiet(a.max_load, a.max_wait)
        print(f"[{name}] load before {la}; running {a.steps} steps ...", flush=True)
        runs[name] = run_trl(a, trl_dir, model, work, env) if name == "trl" else run_rltune(a, model, work, env)
        x = runs[name]
        print(f"[{name}] {x['s_per_step_median']:.3f} s/step median, p90 {x['s_per_step_p90']:.3f}, "
              f"cpu util {x['cpu_utilisation_train']}, acc {x['greedy_acc_before']} -> {x['greedy_acc_after']}, "
              f"RSS {x['peak_rss_mb']} MB", flush=True)
    t, r = runs["trl"], runs["rltune"]
    prompts["rltune_step1_prompts_in_trl_first16"] = (r["first_step_prompts"] is not None and
                                                      set(r["first_step_prompts"]) <= set(check_first16(trl_dir)))

    reasons = []
    for name, x in runs.items():
        if x["load_before"] > a.max_load:
            reasons.append(f"{name}: 1-min load average before the run was {x['load_before']} > {a.max_load}")
        u = x["cpu_utilisation_train"]
        if u is None or u < 0.75 * a.threads:
            reasons.append(f"{name}: training CPU utilisation {u} < 0.75 × {a.threads} threads")
    ratios = None
    if not reasons:
        ratios = {k: round(r[k] / t[k], 3) for k in ("s_per_step_median", "s_per_step_p90", "s_per_step_mean",
                                                      "completion_tok_per_s", "peak_rss_mb",
                                                      "cpu_utilisation_train", "process_cpu_utilisation")}
    all_tok = r["completion_tokens"] + prompts["mean_prompt_tokens"] * a.steps * PROMPTS_PER_STEP * SAMPLES
    fl_c = 6 * params * r["completion_tokens"] / r["update_s"]
    fl_a = 6 * params * all_tok / r["update_s"]
    res = {
        "started": started, "settings": {"steps": a.steps, "threads": a.threads, "model": a.model,
                                         "trl_baseline": str(trl_dir), "prompts_per_step": PROMPTS_PER_STEP,
                                         "samples_per_prompt": SAMPLES, "max_new_tokens": MAX_NEW, "lr": LR,
                                         "loss": "token-mean (TRL loss_type=dapo)", "beta": 0, "dtype": "float32",
                                         "order": order},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
                   f"{platform.python_version()}",
        "prompts": prompts,
        "ratios": ratios, "ratios_refused_reason": "; ".join(reasons) if reasons else None,
        "ratio_definition": "rltune / TRL (s/step < 1 means rltune faster)",
        "flops": {"params": params, "matmul_peak_gflops": peak["gflops"], "matmul": peak,
                  "rltune_update_s": r["update_s"], "trained_tokens_completion": r["completion_tokens"],
                  "trained_tokens_prompt_plus_completion": round(all_tok),
                  "rltune_train_gflops_completion": round(fl_c / 1e9, 2),
                  "rltune_train_gflops_all": round(fl_a / 1e9, 2),
                  "rltune_mfu_completion": round(fl_c / (peak["gflops"] * 1e9), 4),
                  "rltune_mfu_all": round(fl_a / (peak["gflops"] * 1e9), 4)},
        "target": {"rltune_s_per_step_at_0.67x_trl": round(0.67 * t["s_per_step_median"], 4),
                   "rltune_s_per_step_now": r["s_per_step_median"]},
        "trl": t, "rltune": r,
    }
    (out / "vs_trl.json").write_text(json.dumps(res, indent=1))
    write_md(res, out)
    print(json.dumps({k: res[k] for k in ("ratios", "ratios_refused_reason", "flops", "target")}, indent=1))
    print((out / "vs_trl.md").read_text())


def check_first16(trl_dir: Path) -> list[str]:
    code = ("import json,task; p=task.train_problems(3,16,seed=142); "
            "print(json.dumps([task.prompt_of(a,b) for a,b in p]))")
    return json.loads(subprocess.run([sys.executable, "-c", code], cwd=trl_dir, check=True, capture_output=True,
                                     text=True).stdout)


if __name__ == "__main__":
    main()
