"""Cold-start SFT through TRL's SFTTrainer (`rltune sft recipe.yaml`), so a random-init or weak model is
warmed up before RL. Prompt-completion rows from the recipe's data: the loss covers the completion
(the answer column, or `solution`) and EOS only."""

from __future__ import annotations

import os
from pathlib import Path

from rltune.config.schema import Recipe
from rltune.data.prompts import format_prompt, load_rows
from rltune.models.policy import load_policy


class SFTError(ValueError):
    pass


def run_sft(recipe: Recipe, base_dir: str | Path = ".", callbacks: list | None = None) -> dict:
    """`callbacks`: extra transformers TrainerCallbacks (bench/demo_stability.py snapshots the SFT curve)."""
    import datasets
    import torch
    from trl import SFTConfig, SFTTrainer

    if recipe.sft is None:
        raise SFTError("the recipe has no `sft:` section (sft.output_dir, sft.steps, ...); add one to use `rltune sft`")
    s, d = recipe.sft, recipe.data
    out_dir = Path(s.output_dir)
    try:  # checked before training, which would otherwise fail only when it saves
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        what = "is a file, not a folder" if out_dir.is_file() else f"cannot be created: {e.strerror}"
        raise SFTError(f"sft.output_dir {out_dir} {what}; set sft.output_dir to a writable folder path") from None
    os.environ.setdefault("WANDB_MODE", "disabled")
    if recipe.run.threads:  # the same intra-op threads as `rltune train`: kernels' sums differ across thread counts
        torch.set_num_threads(recipe.run.threads)
    model, tok = load_policy(recipe.model, seed=recipe.run.seed)
    n_val = s.val_examples if s.stop_at_accuracy is not None else 0
    if d.source.startswith("builtin:"):
        # A builtin task draws fresh SFT problems with its own seed (never the RL prompts, never the test split);
        # the validation rows are drawn after the training rows, so those are the same with or without them.
        args = dict(d.task_args, n_train=s.num_examples + n_val, train_seed=recipe.run.seed + 1)
        d = d.model_copy(update={"task_args": args})
    rows = load_rows(d, d.split, base_dir=base_dir)
    if n_val and len(rows) <= n_val:
        raise SFTError(f"sft.val_examples={n_val} leaves no SFT rows out of {len(rows)}; lower sft.val_examples")
    if n_val:
        rows, val = rows.select(range(len(rows) - n_val)), rows.select(range(len(rows) - n_val, len(rows)))
    target = "solution" if "solution" in rows.column_names else d.answer_column
    if target is None:
        raise SFTError("SFT needs a target column: set data.answer_column or provide a `solution` column")
    ds = datasets.Dataset.from_dict({
        "prompt": [format_prompt(p, d, tok) for p in rows[d.prompt_column]],
        "completion": [str(c) for c in rows[target]],
    })
    stop = None
    if n_val:
        stop = _stop_at_accuracy(recipe, model, tok, val, set(rows[d.prompt_column]), base_dir)
        callbacks = [*(callbacks or []), stop]
    cfg = SFTConfig(
        output_dir=str(Path(s.output_dir).with_name(Path(s.output_dir).name + ".trl")),
        max_steps=s.steps,
        per_device_train_batch_size=s.batch_size,
        learning_rate=s.lr,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=s.warmup_steps,
        weight_decay=0.01,
        adam_beta2=0.98,
        max_grad_norm=1.0,
        completion_only_loss=True,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=max(1, s.steps // 10),
        seed=recipe.run.seed,
        dataloader_num_workers=0,
        dataset_num_proc=None,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=callbacks)
    out = trainer.train()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    trainer.save_model(s.output_dir)
    tok.save_pretrained(s.output_dir)
    res = {"sft/loss": out.training_loss, "sft/steps": out.global_step}
    if stop is not None:
        res |= {"sft/val_accuracy": stop.last, "sft/reached_target": stop.reached}
        if not stop.reached:
            import warnings

            warnings.warn(f"SFT ran all sft.steps={s.steps} without reaching sft.stop_at_accuracy="
                          f"{s.stop_at_accuracy} (validation accuracy {stop.last:.3f}); raise sft.steps or lower "
                          "the target", stacklevel=2)
    return res


def _stop_at_accuracy(recipe: Recipe, model, tok, val, trained_prompts: set, base_dir):
    """A TrainerCallback that checks greedy accuracy on the validation rows `val` every sft.eval_every steps and
    stops SFT at sft.stop_at_accuracy. Validation prompts that also occur among the SFT rows are dropped."""
    import torch
    from transformers import TrainerCallback

    from rltune.reward import RewardManager
    from rltune.rollout.base import SamplingParams
    from rltune.rollout.hf_engine import HFEngine
    from rltune.train.shared import greedy_eval

    d, s, ro = recipe.data, recipe.sft, recipe.rollout
    val = val.filter(lambda r: r[d.prompt_column] not in trained_prompts)
    rows = {"prompts": [format_prompt(p, d, tok) for p in val[d.prompt_column]], "meta": val.to_dict()}
    rewards = RewardManager(recipe.rewards, base_dir=base_dir)
    sampling = SamplingParams(n=1, max_new_tokens=ro.max_new_tokens, temperature=ro.temperature, top_p=ro.top_p,
                              top_k=ro.top_k, greedy=True)

    class StopAtAccuracy(TrainerCallback):
        last, reached = float("nan"), False

        def on_step_end(self, args, state, control, **kw):
            if state.global_step % s.eval_every:
                return
            was_training = model.training
            model.eval()
            with torch.no_grad():
                engine = HFEngine(model, tok, d.max_prompt_tokens, decode=ro.decode)
                self.last = greedy_eval(engine, rewards, rows, sampling, recipe.rewards, step=0)["eval/accuracy"]
            model.train(was_training)
            print(f"sft step {state.global_step}: validation accuracy {self.last:.3f} (stops at "
                  f"{s.stop_at_accuracy})", flush=True)
            if self.last >= s.stop_at_accuracy:
                self.reached = control.should_training_stop = True

    return StopAtAccuracy()
