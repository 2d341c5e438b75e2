"""GPU check: rltune vs TRL GRPOTrainer, back to back on one GPU, random-init Qwen2-0.5B-sized model.

One invocation does, each in its own subprocess (clean CUDA context and peak-memory numbers, and a hang or crash in
one cannot take the others down):
  1. build   a random-init Qwen2ForCausalLM with Qwen2-0.5B body dims (hidden 896, 24 layers, 14 heads, 2 KV heads,
             intermediate 4864, rope_theta 1e6, tied embeddings) but the vocabulary of rltune's offline char tokenizer
             (99 ids: nothing can be downloaded, so no real Qwen tokenizer); bf16; saved with the tokenizer to a
             temp dir;
  2. peak    a bf16 8192^3 matmul peak on the same GPU (denominator of the MFU);
  3. rltune  rltune.trainer.Trainer on that folder: builtin addition, B=16 prompts x G=8 samples, 32 new tokens,
             lr 1e-6, token-mean loss, kl 0, micro-batch 128, reward tests/helpers/rewards.py:char_code; time/* from
             metrics.jsonl;
  4. trl     trl.GRPOTrainer on the same folder and prompts: num_generations 8, 128 completions per step,
             max_completion_length 32, lr 1e-6, beta 0, loss_type dapo (= token-mean), bf16, HF generate (no vLLM),
             no gradient checkpointing (both); each step timed by a TrainerCallback (CUDA-synchronised).
Warm-up steps (default 3) are dropped; s/step median/p90, completion tokens/s, peak GPU memory and the training-phase
MFU are computed over the timed steps (default 10). With a random-init model ~70% of completions run to the 32-token cap
(a throughput test, not a learning one).

rltune runs on the GPU through its own `run.device` setting; the harness only adds a CUDA synchronise after each
update so time/update holds the optimizer step's kernels (timing, not behaviour).

Self-contained: imports nothing from ../shared (the TRL config mirrors shared/bench/trl_baseline/trl_grpo.py).

    python bench/gpu_vs_trl.py                          # GPU (budget 345 s) -> bench/results/gpu_vs_trl.{json,md}
    python bench/gpu_vs_trl.py --out $OUT/gpu_vs_trl.json   # on the lent device machine (only $OUT comes back)
    python bench/gpu_vs_trl.py --tiny --device cpu      # CPU smoke test (tiny dims, fp32, 1+2 steps), < 2 min
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_vs_trl_report import (cuda_mem, device_info, dtype_of, log, med, mfu, pct, r4,  # noqa: E402
                                sync, third_party_modules, versions, write_md)
REWARD = "tests/helpers/rewards.py:char_code"  # TRL-style; varies across any two samples -> non-zero advantages
# Qwen2-0.5B body (its config.json), vocab replaced by the char tokenizer's.
QWEN2_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, rope_theta=1_000_000.0, max_position_embeddings=131072, rms_norm_eps=1e-6,
                 hidden_act="silu", tie_word_embeddings=True, use_sliding_window=False)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            rope_theta=1_000_000.0, max_position_embeddings=256, rms_norm_eps=1e-6, hidden_act="silu",
            tie_word_embeddings=True, use_sliding_window=False)
ENV_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
               "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
               "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}


def role_build(s: dict) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rltune.models.tokenizer import build_char_tokenizer

    t0 = time.perf_counter()
    tok = build_char_tokenizer()
    dims = TINY if s["tiny"] else QWEN2_05B
    cfg = Qwen2Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, **dims)
    torch.manual_seed(s["seed"])
    with torch.device(s["device"]):  # init on the GPU: seconds instead of a minute of CPU init for 0.36B params
        model = Qwen2ForCausalLM(cfg)
    model.to(dtype_of(s["dtype"]))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(s["model_dir"])
    tok.save_pretrained(s["model_dir"])
    emb = model.get_input_embeddings().weight.numel()
    return {"arch": "Qwen2ForCausalLM", "dims": dims, "vocab": len(tok), "params": n, "params_non_embedding": n - emb,
            "dtype": s["dtype"], "rope_parameters": getattr(model.config, "rope_parameters", None),
            "vocab_note": "rltune's offline char tokenizer (rltune.models.tokenizer.build_char_tokenizer), since no "
                          "real tokenizer can be downloaded; Qwen2-0.5B itself has vocab 151936 (494M params, 136M of "
                          "them embedding); the body here is the same, so 6*N*tokens counts the same matmuls minus "
                          "the LM head",
            "build_s": round(time.perf_counter() - t0, 1), **device_info(s["device"])}


def role_peak(s: dict) -> dict:
    import torch

    dev = s["device"]
    if dev.startswith("cuda"):
        n, dt, reps = 8192, torch.bfloat16, 30
    else:
        n, dt, reps = 1024, torch.float32, 20
        if s["threads"]:
            torch.set_num_threads(s["threads"])
    a = torch.randn(n, n, dtype=dt, device=dev)
    b = torch.randn(n, n, dtype=dt, device=dev)
    for _ in range(5):
        a @ b
    sync(dev)
    best = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        sync(dev)
        best.append(time.perf_counter() - t0)
    fl = 2 * n**3 * reps / min(best)
    return {"tflops": round(fl / 1e12, 2), "shape": [n, n, n], "dtype": str(dt).replace("torch.", ""), "reps": reps,
            "timing": "best of 3 batches of reps, after 5 warm-up matmuls, synchronised", **device_info(dev)}


def role_rltune(s: dict) -> dict:
    import torch

    import rltune.trainer as rt
    from rltune.config.load import recipe_from_dict

    dev = s["device"]
    run_dir = Path(s["work"]) / "rltune_run"
    steps = s["warmup"] + s["timed"]
    recipe = recipe_from_dict({
        "run": {"name": "gpu-vs-trl", "seed": s["seed"], "output_dir": str(run_dir), "steps": steps,
                "eval_interval": None, "save_interval": 0, "threads": s["threads"],
                "device": "cuda" if dev.startswith("cuda") else "cpu"},
        "model": {"path": s["model_dir"], "dtype": s["dtype"]},
        # eval runs once before and once after fit()'s steps (outside time/step); 16 rows keep it short
        "data": {"source": "builtin:addition", "task_args": {"digits": 3}, "shuffle": False, "eval_size": 16},
        "rollout": {"prompts_per_step": s["prompts"], "samples_per_prompt": s["samples"],
                    "max_new_tokens": s["max_new"], "temperature": 1.0, "top_p": 1.0, "top_k": 0},
        "algo": {"advantage": "group_norm", "scale_rewards": "group", "loss_agg": "token-mean", "kl_coef": 0.0,
                 "clip_low": 0.2, "clip_high": 0.2},
        "train": {"lr": s["lr"], "micro_batch_size": s["micro_batch"], "max_grad_norm": 1.0, "scheduler": "constant"},
        "rewards": [{"use": REWARD}],
        "logging": {"console": False, "jsonl": True},
    }, source="bench/gpu_vs_trl.py")

    t0 = time.perf_counter()
    trainer = rt.Trainer(recipe, base_dir=ROOT, overwrite=True)
    load_s = time.perf_counter() - t0
    model = trainer.model
    n_params = sum(p.numel() for p in model.parameters())
    assert next(model.parameters()).device.type == torch.device(dev).type

    upd_tokens: list[dict] = []
    orig_update = trainer.engine.update

    def update(x, plan, spec, state, mods):
        am = x.attention_mask
        upd_tokens.append({"tokens": int(am.sum()), "padded_tokens": int(am.numel()), "rows": int(am.shape[0]),
                           "width": int(am.shape[1])})
        out = orig_update(x, plan, spec, state, mods)
        sync(dev)  # timing only: the optimizer step's queued kernels belong to time/update
        return out

    trainer.engine.update = update
    starts: list[float] = []
    orig_step = trainer.train_step

    def train_step():
        starts.append(time.perf_counter())
        m = orig_step()
        i = len(starts)
        log(f"[rltune] step {i}/{steps}{' (warm-up)' if i <= s['warmup'] else ''}: {m['time/step']:.3f} s "
            f"(rollout {m.get('time/rollout', 0):.3f}, update {m.get('time/update', 0):.3f}), "
            f"{m['perf/tokens']} completion tokens")
        return m

    trainer.train_step = train_step
    # Bench only: no end-of-run checkpoint/export (GBs of optimizer state for 0.36B params; outside the steps anyway).
    trainer.save_checkpoint = lambda: None
    trainer.export = lambda out: None
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    trainer.fit()
    fit_s = time.perf_counter() - t1

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps_rows = [r for r in rows if "time/step" in r]
    assert len(steps_rows) == steps == len(upd_tokens), (len(steps_rows), steps, len(upd_tokens))
    W = s["warmup"]
    timed = steps_rows[W:]
    sw = [r["time/step"] for r in timed]
    s2s = [starts[i + 1] - starts[i] for i in range(W, steps - 1)]  # step start -> next step start (incl. logging)
    comp = [r["perf/tokens"] for r in timed]
    phase_keys = sorted({k for r in timed for k in r if k.startswith("time/") and k not in ("time/step", "time/eval")
                         and not k.startswith("time/reward/")})
    phases = {k: r4(med([r.get(k, 0.0) for r in timed])) for k in phase_keys}
    toks = [u["tokens"] for u in upd_tokens[W:]]
    padded = [u["padded_tokens"] for u in upd_tokens[W:]]
    # training phase = the policy update (+ a no-grad scoring forward, timed as time/old_logprobs, if one ran)
    scored = [bool(r.get("time/old_logprobs")) for r in timed]
    train_t = [r.get("time/update", 0.0) + r.get("time/old_logprobs", 0.0) for r in timed]
    flops = [(6 + (2 if sc else 0)) * n_params * t for sc, t in zip(scored, toks)]
    flops_pad = [(6 + (2 if sc else 0)) * n_params * t for sc, t in zip(scored, padded)]
    return {
        "s_per_step": [r4(x) for x in sw], "s_per_step_median": r4(med(sw)), "s_per_step_p90": r4(pct(sw, 0.9)),
        "s_per_step_mean": r4(statistics.mean(sw)),
        "s_per_step_start_to_start_median": r4(med(s2s)),
        "completion_tokens_per_step": comp, "completion_tok_per_s": round(sum(comp) / sum(sw), 1),
        "mean_completion_len": round(sum(comp) / (len(comp) * s["prompts"] * s["samples"]), 2),
        "truncated_frac_mean": r4(statistics.mean(r.get("rollout/truncated_frac", 0.0) for r in timed)),
        "phases_median_s": phases,
        "train_phase_s_median": r4(med(train_t)),
        "generate_s_median": phases.get("time/rollout"),  # HF generate + decode (rltune's rollout phase)
        "train_tokens_per_step": toks, "train_padded_tokens_per_step": padded,
        "scoring_forward": any(scored),
        "train_flops_per_step_median": med(flops),
        "_train_flops": flops, "_train_flops_padded": flops_pad, "_train_t": train_t,
        "params": n_params, "micro_batch_size": s["micro_batch"],
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "optimizer": "torch.optim.AdamW(foreach=True) on the model's dtype (rltune TorchEngine)",
        "weights_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "trainer_init_s": round(load_s, 1), "fit_s": round(fit_s, 1),
        "reward_mean_timed": r4(statistics.mean(r["reward/mean"] for r in timed)),
        **cuda_mem(dev),
    }


def role_trl(s: dict) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rltune.data.tasks import addition
    from rltune.plugins import resolve

    dev = s["device"]
    cuda = dev.startswith("cuda")
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    # TRL's internal phase timers (normally only sent to wandb/mlflow/trackio), as trl_baseline/trl_grpo.py does
    phase = collections.defaultdict(float)
    try:
        import trl.extras.profiling as trl_prof

        def _capture(self, duration):
            name = self.name.split(".", 1)[1] if self.name.startswith("GRPOTrainer.") else self.name
            phase[name] += duration

        trl_prof.ProfilingContext._log_metrics = _capture
    except Exception as e:  # noqa: BLE001 - phases are extra information
        log(f"[trl] no profiling hooks ({e}); phases unavailable")

    tok = AutoTokenizer.from_pretrained(s["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(s["model_dir"], dtype=dtype_of(s["trl_dtype"]))
    n_params = sum(p.numel() for p in model.parameters())
    steps = s["warmup"] + s["timed"]
    B, G = s["prompts"], s["samples"]
    # same prompts, same order as rltune (builtin addition, train split, data.shuffle false)
    rows = addition("train", digits=3)[: steps * B]
    ds = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])

    char_code = resolve(REWARD, "rewards", base_dir=ROOT)
    calls: list[dict] = []

    def reward_char_code(prompts, completions, completion_ids=None, **kw):
        calls.append({"completion_tokens": sum(len(c) for c in completion_ids) if completion_ids is not None else None,
                      "prompt_tokens": sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts),
                      "n": len(completions)})
        return char_code(completions=completions)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t = None
            self.step_s, self.starts, self.phase_at_end = [], [], []

        def on_step_begin(self, args, state, control, **kw):
            sync(dev)
            self.t = time.perf_counter()
            self.starts.append(self.t)

        def on_step_end(self, args, state, control, **kw):
            sync(dev)
            self.step_s.append(time.perf_counter() - self.t)
            self.phase_at_end.append(dict(phase))
            i = len(self.step_s)
            c = calls[-1]["completion_tokens"] if calls else None
            log(f"[trl] step {i}/{steps}{' (warm-up)' if i <= s['warmup'] else ''}: {self.step_s[-1]:.3f} s, "
                f"{c} completion tokens")

    extra = {"bf16": True, "fp16": False} if cuda else {"bf16": False, "fp16": False, "use_cpu": True}
    cfg = GRPOConfig(
        output_dir=str(Path(s["work"]) / "trl_out"),
        max_steps=steps,
        per_device_train_batch_size=B * G,  # TRL counts completions: 16 prompts x 8 = 128 per optimizer step
        gradient_accumulation_steps=1,
        num_generations=G,
        max_completion_length=s["max_new"],
        temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=s["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=0.0, num_iterations=1, epsilon=0.2, loss_type="dapo", scale_rewards="group",
        use_vllm=False, gradient_checkpointing=False,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        shuffle_dataset=False, seed=42, log_completions=False,
        **extra,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=[reward_char_code], args=cfg, train_dataset=ds,
                          processing_class=tok, callbacks=[timer])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    trainer.train()
    fit_s = time.perf_counter() - t1
    W = s["warmup"]
    assert len(timer.step_s) == steps, (len(timer.step_s), steps)
    sw = timer.step_s[W:]
    s2s = [timer.starts[i + 1] - timer.starts[i] for i in range(W, steps - 1)]
    assert len(calls) == steps, f"reward called {len(calls)} times for {steps} steps"
    comp = [c["completion_tokens"] for c in calls[W:]]
    toks = [c["completion_tokens"] + c["prompt_tokens"] for c in calls[W:]]
    # per-step phase times: differences of the cumulative timers at consecutive step ends
    ends = timer.phase_at_end
    per = {k: [ends[i].get(k, 0.0) - (ends[i - 1].get(k, 0.0) if i else 0.0) for i in range(W, steps)]
           for k in (ends[-1] if ends else {})}
    prep = per.get("_prepare_inputs")
    train_t = [t - p for t, p in zip(sw, prep)] if prep else None  # compute_loss + backward + optimizer + hooks
    flops = [6 * n_params * t for t in toks]
    opt = getattr(trainer, "optimizer", None)
    return {
        "s_per_step": [r4(x) for x in sw], "s_per_step_median": r4(med(sw)), "s_per_step_p90": r4(pct(sw, 0.9)),
        "s_per_step_mean": r4(statistics.mean(sw)),
        "s_per_step_start_to_start_median": r4(med(s2s)),
        "completion_tokens_per_step": comp, "completion_tok_per_s": round(sum(comp) / sum(sw), 1),
        "mean_completion_len": round(sum(comp) / (len(comp) * B * G), 2),
        "phases_median_s": {k: r4(med(v)) for k, v in sorted(per.items())},
        "train_phase_s_median": r4(med(train_t)) if train_t else None,
        "generate_s_median": r4(med(per["transformers.generate"])) if "transformers.generate" in per else None,
        "train_phase_definition": "step time - TRL's _prepare_inputs (generate, rewards, advantages): compute_loss "
                                  "(policy forward) + backward + optimizer + Trainer hooks",
        "train_tokens_per_step": toks, "train_flops_per_step_median": med(flops),
        "_train_flops": flops, "_train_t": train_t,
        "params": n_params,
        "attn_implementation": getattr(trainer.model.config, "_attn_implementation", None),
        "optimizer": f"{type(opt.optimizer if hasattr(opt, 'optimizer') else opt).__name__} (args.optim="
                     f"{cfg.optim}, fused={getattr(opt, 'defaults', {}).get('fused')})",
        "weights_dtype": str(next(trainer.model.parameters()).dtype).replace("torch.", ""),
        "autocast_bf16": bool(cfg.bf16),
        "trl_version": trl.__version__, "fit_s": round(fit_s, 1),
        **cuda_mem(dev),
    }


ROLES = {"build": role_build, "peak": role_peak, "rltune": role_rltune, "trl": role_trl}


def child_main(role: str, spec: str, result: str) -> None:
    s = json.loads(Path(spec).read_text())
    if s["threads"]:
        import torch

        torch.set_num_threads(s["threads"])
    out = ROLES[role](s)
    out["versions"] = versions()
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["third_party_modules"] = third_party_modules()
    Path(result).write_text(json.dumps(out, indent=1, default=str))


# ============================================================================================== parent
def run_child(role: str, spec: Path, work: Path, env: dict, timeout: float) -> dict:
    """Run one role in a subprocess, stream its output with a prefix, return its result JSON (or an error)."""
    result = work / f"{role}.result.json"
    result.unlink(missing_ok=True)
    logf = work / f"{role}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--role", role, "--spec", str(spec), "--result", str(result)]
    t0 = time.perf_counter()
    tail: collections.deque[str] = collections.deque(maxlen=40)
    with open(logf, "w") as fh:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)

        def pump():
            for line in p.stdout:
                fh.write(line)
                tail.append(line.rstrip())
                if not line.startswith("{'"):  # TRL's per-step log dicts: in the log file only
                    print(f"  {role}| {line.rstrip()}", flush=True)

        th = threading.Thread(target=pump, daemon=True)
        th.start()
        try:
            rc = p.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait()
            rc = None
        th.join(5)
    wall = round(time.perf_counter() - t0, 1)
    if rc is None:
        return {"error": f"timed out after {timeout:.0f} s (budget)", "process_wall_s": wall, "log_tail": list(tail)}
    if rc != 0 or not result.is_file():
        return {"error": f"exit code {rc}", "process_wall_s": wall, "log_tail": list(tail)}
    out = json.loads(result.read_text())
    out["process_wall_s"] = wall
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny model dims (smoke test); defaults to fp32, 1+2 steps")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], help="model weights (default bf16; fp32 with --tiny)")
    ap.add_argument("--trl-dtype", choices=["same", "bfloat16", "float32"], default="same",
                    help="TRL weights: same as rltune (default), or float32 = fp32 master weights + bf16 autocast "
                         "(TRL's own default when it loads a model from a path)")
    ap.add_argument("--warmup", type=int, help="warm-up steps, not timed (default 3; 1 with --tiny)")
    ap.add_argument("--timed", type=int, help="timed steps (default 10; 2 with --tiny)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--micro-batch", type=int, default=128, help="rltune train.micro_batch_size (TRL: one pass of 128)")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's on cuda, 2 on cpu)")
    ap.add_argument("--order", choices=["rltune-first", "trl-first"], default="rltune-first")
    ap.add_argument("--budget-s", type=float, default=345, help="stop starting/continuing children after this (s)")
    ap.add_argument("--out", help="JSON path (default bench/results/gpu_vs_trl.json; gpu_vs_trl_tiny.json with --tiny)")
    ap.add_argument("--work", help="work dir (default: a temp dir, removed at the end unless --keep)")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if a.role:
        child_main(a.role, a.spec, a.result)
        return

    T0 = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    dtype = a.dtype or ("float32" if a.tiny else "bfloat16")
    s = {"tiny": a.tiny, "device": a.device, "dtype": dtype,
         "trl_dtype": dtype if a.trl_dtype == "same" else a.trl_dtype,
         "warmup": a.warmup if a.warmup is not None else (1 if a.tiny else 3),
         "timed": a.timed if a.timed is not None else (2 if a.tiny else 10),
         "prompts": a.prompts, "samples": a.samples, "max_new": a.max_new, "micro_batch": a.micro_batch, "lr": a.lr,
         "seed": a.seed, "threads": a.threads if a.threads is not None else (0 if a.device.startswith("cuda") else 2),
         "order": a.order, "reward": REWARD, "loss": "token-mean (TRL loss_type=dapo)", "beta_kl": 0.0,
         "temperature": 1.0, "data": "builtin:addition digits=3, train split in order (data.shuffle false / "
                                     "shuffle_dataset False)"}
    if s["timed"] < 1 or s["warmup"] < 0:
        sys.exit("--timed must be >= 1 and --warmup >= 0")
    out = Path(a.out) if a.out else ROOT / "bench/results" / ("gpu_vs_trl_tiny.json" if a.tiny else "gpu_vs_trl.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not (ROOT / REWARD.split(":")[0]).is_file():
        sys.exit(f"missing {REWARD.split(':')[0]} (the reward both trainers use)")
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="gpu_vs_trl_"))
    work.mkdir(parents=True, exist_ok=True)
    s["work"] = str(work)
    s["model_dir"] = str(work / "model")
    spec = work / "spec.json"
    spec.write_text(json.dumps(s, indent=1))
    env = dict(os.environ, **ENV_OFFLINE)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    if s["threads"]:
        env.update(OMP_NUM_THREADS=str(s["threads"]), MKL_NUM_THREADS=str(s["threads"]))
    log(f"gpu_vs_trl: device {a.device}, {'tiny' if a.tiny else 'Qwen2-0.5B-sized'} {dtype}, "
        f"{s['warmup']}+{s['timed']} steps each, work dir {work}")

    def left() -> float:
        return a.budget_s - (time.perf_counter() - T0)

    res: dict = {"started": started, "settings": {k: v for k, v in s.items() if k not in ("work", "model_dir")},
                 "rltune_device": "run.device (rltune's own); the harness synchronises CUDA after each update so "
                 "time/update holds the optimizer step",
                 "errors": {}}
    log("[build] random-init model ...")
    b = run_child("build", spec, work, env, min(180, left()))
    if "error" in b:
        res["errors"]["build"] = b
    else:
        res["model"] = {k: v for k, v in b.items() if k not in ("versions", "third_party_modules")}
        res["device"] = b.get("device")
        log(f"[build] {b['params']:,} params, vocab {b['vocab']}, {b['build_s']} s, device {b.get('device')}")
        pk = run_child("peak", spec, work, env, min(120, left()))
        if "error" in pk:
            res["errors"]["peak"] = pk
        else:
            res["matmul_peak"] = {k: v for k, v in pk.items() if k not in ("third_party_modules",)}
            log(f"[peak] {pk['tflops']} TFLOP/s {pk['dtype']} {pk['shape']}")
        order = ["rltune", "trl"] if a.order == "rltune-first" else ["trl", "rltune"]
        for name in order:
            if left() < 20:
                res["errors"][name] = {"error": f"not started: {a.budget_s} s budget used up"}
                continue
            log(f"[{name}] {s['warmup']} warm-up + {s['timed']} timed steps (budget left {left():.0f} s) ...")
            x = run_child(name, spec, work, env, left())
            if "error" in x:
                res["errors"][name] = x
                log(f"[{name}] FAILED: {x['error']}")
                continue
            x.update(mfu(x, res.get("matmul_peak", {}).get("tflops")))
            res[name] = x
            log(f"[{name}] {x['s_per_step_median']:.3f} s/step median (p90 {x['s_per_step_p90']:.3f}), "
                f"{x['completion_tok_per_s']:.0f} completion tok/s, train MFU {x.get('train_mfu')}, "
                f"peak mem {x.get('peak_gpu_mem_allocated_gib')} GiB")
    r, t = res.get("rltune"), res.get("trl")
    res["ratios"] = None
    if r and t:
        keys = ("s_per_step_median", "s_per_step_p90", "s_per_step_mean", "s_per_step_start_to_start_median",
                "completion_tok_per_s", "train_phase_s_median", "train_mfu", "peak_gpu_mem_allocated_gib",
                "peak_rss_mb", "generate_s_median")
        res["ratios"] = {k: round(r[k] / t[k], 3) for k in keys if r.get(k) and t.get(k)}
        res["ratio_definition"] = "rltune / TRL (s/step < 1: rltune faster; tok/s and MFU > 1: rltune better)"
    vs = (r or t or {}).get("versions") or b.get("versions") or {}
    res["versions"] = vs
    mods = set()
    for k in ("rltune", "trl"):
        mods |= set((res.get(k) or {}).get("third_party_modules", []))
    res["third_party_modules"] = sorted(mods)
    res["wall_s"] = round(time.perf_counter() - T0, 1)
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    out.write_text(json.dumps(res, indent=1, default=str))
    md = write_md(res, out.with_suffix(".md"))
    print("\n" + md, flush=True)
    log(f"wrote {out} and {out.with_suffix('.md')} ({res['wall_s']} s)")
    if not a.keep and not a.work:
        shutil.rmtree(work, ignore_errors=True)
    if res["errors"]:
        sys.exit(f"errors: {', '.join(res['errors'])} (details in {out})")


if __name__ == "__main__":
    main()
