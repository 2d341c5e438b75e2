"""Where one rltune step's time goes: torch.profiler over the steps of the vs_trl setup (tiny SFT model, 16 prompts
x 8 samples x 8 new tokens, fp32, CPU). Each trainer phase is a profiler range (its `time/*` name), so the
tables give time per phase and the operators inside it.

    python bench/profile_step.py --steps 20 --threads 2     # -> bench/results/profile_step.{json,md}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="runs/addition-tiny-sft")
    ap.add_argument("--out", default=str(ROOT / "bench/results"))
    a = ap.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from rltune import trainer as T
    from rltune.config.load import load_recipe

    r = load_recipe(ROOT / "recipes/addition-tiny.yaml", [
        f"sft.output_dir={a.model}", f"run.steps={a.warmup + a.steps}", f"run.threads={a.threads}",
        "run.eval_interval=0", "run.save_interval=0", f"run.output_dir={ROOT / 'runs/bench-profile'}"])
    orig = T.Trainer._phase

    @contextlib.contextmanager
    def phase(self, timers, key):
        with record_function(key), orig(self, timers, key):
            yield

    T.Trainer._phase = phase
    tr = T.Trainer(r, base_dir=ROOT, overwrite=True)
    for _ in range(a.warmup):
        tr.train_step()
        tr.step += 1
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            with record_function("step"):
                tr.train_step()
            tr.step += 1
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    per_step = lambda us: round(us / 1e3 / a.steps, 2)  # noqa: E731  (ms per step)
    phases = {e.key: per_step(e.cpu_time_total) for e in events if e.key.startswith("time/")}
    ops = sorted((e for e in events if not e.key.startswith(("time/", "step"))), key=lambda e: -e.self_cpu_time_total)
    top = [{"op": e.key, "self_ms_per_step": per_step(e.self_cpu_time_total), "calls_per_step": e.count / a.steps}
           for e in ops[:20]]
    # Operators inside each phase: the profiler's tree, summed by (phase, op).
    inside: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def walk(ev, ph):
        ph = ev.name if ev.name.startswith("time/") else ph
        if ph and not ev.name.startswith(("time/", "step")):
            inside[ph][ev.name] += ev.self_cpu_time_total
        for c in ev.cpu_children:
            walk(c, ph)

    for ev in prof.events():
        if ev.cpu_parent is None:
            walk(ev, None)
    by_phase = {ph: [{"op": k, "self_ms_per_step": per_step(v)} for k, v in sorted(d.items(), key=lambda x: -x[1])[:8]]
                for ph, d in inside.items()}
    res = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "threads": a.threads, "steps": a.steps,
           "load_avg_before": os.getloadavg(), "s_per_step_profiled": round(wall / a.steps, 4),
           "phases_ms_per_step": phases, "top_ops": top, "top_ops_by_phase": by_phase,
           "torch": torch.__version__}
    out = Path(a.out)
    (out / "profile_step.json").write_text(json.dumps(res, indent=1))
    L = [f"# Where an rltune step goes (torch.profiler, {a.steps} steps, threads {a.threads})", "",
         f"{res['started']}; {res['machine']}; load before {[round(x, 2) for x in res['load_avg_before']]}; "
         f"{res['s_per_step_profiled']} s/step under the profiler (its overhead included).", "",
         "| phase | ms/step |", "|---|---|", *[f"| {k} | {v} |" for k, v in sorted(phases.items(), key=lambda x: -x[1])],
         "", "| operator (all phases) | self ms/step | calls/step |", "|---|---|---|",
         *[f"| {t['op']} | {t['self_ms_per_step']} | {t['calls_per_step']:.0f} |" for t in top[:12]], ""]
    for ph in ("time/rollout", "time/update"):
        if ph in by_phase:
            L += [f"| inside {ph} | self ms/step |", "|---|---|",
                  *[f"| {t['op']} | {t['self_ms_per_step']} |" for t in by_phase[ph]], ""]
    (out / "profile_step.md").write_text("\n".join(L))
    print("\n".join(L))


if __name__ == "__main__":
    main()
