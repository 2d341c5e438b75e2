"""rltune command line: train | sft | validate | show | plugins | eval.

    rltune sft recipes/addition-tiny.yaml                 # warm start (TRL SFTTrainer)
    rltune train recipes/addition-tiny.yaml               # GRPO from the recipe
    rltune train recipes/addition-tiny.yaml algo.kl_coef=0.01 run.steps=50
    rltune train recipes/addition-tiny.yaml --resume      # continue from the last checkpoint
    rltune train recipes/addition-tiny.yaml run.steps=600 --resume --allow-changes   # ... for longer
    rltune validate recipes/*.yaml                        # schema + plugins + model folder, no heavy work
    rltune validate recipes/addition-tiny.yaml algo.kl_coef=0.1   # ... with overrides, as train would see it
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="RL post-training from one typed YAML recipe.")
out = Console()
err = Console(stderr=True)

from rltune._env import apply_defaults  # noqa: E402

apply_defaults()


def _user_errors() -> tuple[type[BaseException], ...]:
    from rltune.config.load import RecipeError
    from rltune.data.prompts import DataError
    from rltune.models.policy import ModelLoadError
    from rltune.modifiers.pipeline import ModifierError
    from rltune.plugins import PluginError
    from rltune.reward import RewardError
    from rltune.rollout.dynamic import DynamicSamplingError
    from rltune.rollout.hf_engine import PromptTooLongError
    from rltune.rollout.vllm_engine import EngineUnavailableError
    from rltune.sft import SFTError
    from rltune.train.checkpoint import CheckpointError
    from rltune.train.worker import TrainRankDiedError
    from rltune.trainer import RunDirError, TrainingDivergedError

    return (RecipeError, DataError, ModelLoadError, ModifierError, PluginError, RewardError, PromptTooLongError,
            SFTError, RunDirError, TrainingDivergedError, DynamicSamplingError, TrainRankDiedError,
            EngineUnavailableError, CheckpointError)


def _fail(e: BaseException) -> None:
    err.print(f"[bold red]error:[/] {type(e).__name__}: ", end="")
    err.print(str(e), markup=False, highlight=False, soft_wrap=True)  # soft: paths stay whole for copy-paste
    raise typer.Exit(2)


def _load(recipe: Path, overrides: list[str]):
    from rltune.config.load import load_recipe

    return load_recipe(recipe, overrides)


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides, e.g. algo.kl_coef=0.01"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run directory's last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in a run directory rltune created: the old "
                                   "run is deleted once the recipe's model, data and rewards have loaded."),
    allow_changes: bool = typer.Option(False, "--allow-changes", help="With --resume: accept recipe changes to "
                                       "run.steps, intervals and logging (recorded in recipe_history.jsonl)."),
) -> None:
    """Run RL post-training from a recipe."""
    try:
        r = _load(recipe, overrides or [])
        from rltune.trainer import build_trainer

        trainer = build_trainer(r, resume=resume, overwrite=overwrite, allow_changes=allow_changes)
        _print_plan(r, trainer)
        trainer.fit()
    except _user_errors() as e:
        _fail(e)
    _print_summary(trainer, recipe)


@app.command()
def sft(
    recipe: Path = typer.Argument(...),
    overrides: Optional[list[str]] = typer.Argument(None),
) -> None:
    """Cold-start SFT (TRL SFTTrainer) into the recipe's sft.output_dir."""
    try:
        r = _load(recipe, overrides or [])
        from rltune.sft import run_sft

        res = run_sft(r)
        if r.data.source.startswith("builtin:") or r.data.eval_source:
            res |= _eval_model(r, r.sft.output_dir)
        out.print(f"SFT done: {json.dumps(res)}  -> {r.sft.output_dir}")
    except _user_errors() as e:
        _fail(e)


@app.command()
def validate(
    args: list[str] = typer.Argument(..., help="Recipe files, then optional dotted overrides (key=value)."),
    model_check: bool = typer.Option(True, "--model-check/--no-model-check",
                                     help="Check that model.path holds a config and a tokenizer (no weights read); "
                                     "--no-model-check for recipes whose models live on another machine."),
) -> None:
    """Check the schema, resolve every plugin and bind its args, check that the policy family (model.kind) honours
    every key set and runs every modifier, and check the model folder (no weights, no data, no GPU). Overrides
    apply to every recipe, as `rltune train RECIPE key=value` would. Exit 2 if any recipe fails."""
    from rltune import plugins
    from rltune.families import check_support
    from rltune.models.policy import check_model_folder
    from rltune.modifiers.pipeline import check_modifier_class

    overrides = [a for a in args if "=" in a]
    recipes = [Path(a) for a in args if "=" not in a]
    if not recipes:
        err.print("validate: name at least one recipe file before the overrides, e.g. "
                  "`rltune validate recipe.yaml algo.kl_coef=0.1`")
        raise typer.Exit(2)
    bad = 0
    for path in recipes:
        try:
            r = _load(path, overrides)
            for spec in r.rewards:
                target = plugins.resolve(spec.use, "rewards")
                if isinstance(target, type) or spec.args:
                    plugins.bind_args(target, spec.args, spec.use)
            classes = {}
            for m in r.modifiers:
                cls = classes[m.key] = plugins.resolve(m.use, "modifiers")
                check_modifier_class(cls, m.key)
                plugins.bind_args(cls, m.args, m.use)
            check_support(r, classes)
            if r.env is not None:
                plugins.bind_args(plugins.resolve(r.env.use, "envs"), r.env.args, r.env.use)
            if model_check:
                check_model_folder(r.model)
            out.print(f"[green]ok[/]   {path}")
        except _user_errors() as e:
            bad += 1
            out.print(f"[red]fail[/] {path}", highlight=False, soft_wrap=True)
            out.print(str(e), markup=False, highlight=False, soft_wrap=True)
    if bad:
        raise typer.Exit(2)  # a bad recipe is a user error, as in train/show


@app.command()
def show(recipe: Path, overrides: Optional[list[str]] = typer.Argument(None)) -> None:
    """Print the fully resolved recipe (every default filled in) and the derived batch sizes."""
    from rltune.config.load import dump_recipe

    try:
        r = _load(recipe, overrides or [])
    except _user_errors() as e:
        _fail(e)
    out.print(dump_recipe(r), markup=False, highlight=False)
    out.print(f"# derived: {_plan_line(r)}")


@app.command("plugins")
def plugins_cmd() -> None:
    """List installed rewards, modifiers and environments (entry points)."""
    from rltune import plugins

    for group in ("rewards", "modifiers", "envs"):
        t = Table(title=f"rltune.{group}")
        t.add_column("name")
        t.add_column("target")
        for name, target in sorted(plugins.installed(group).items()):
            t.add_row(name, target)
        out.print(t)


@app.command("eval")
def eval_cmd(
    recipe: Path,
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="A model folder (run/final, sft output, ...)."),
    overrides: Optional[list[str]] = typer.Argument(None),
) -> None:
    """Greedy held-out accuracy of a saved model."""
    try:
        r = _load(recipe, overrides or [])
        if not (checkpoint / "config.json").is_file():
            from rltune.models.policy import ModelLoadError

            raise ModelLoadError(f"--checkpoint {checkpoint}: not a model folder (no config.json); give a run's "
                                 "final/ folder, an SFT output or a checkpoint's model/ folder")
        out.print(json.dumps(_eval_model(r, str(checkpoint))))
    except _user_errors() as e:
        _fail(e)


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="One or more run directories (runs/<name>)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default RUN/report)."),
) -> None:
    """A self-contained HTML report (and PNGs) of one run, or of several side by side."""
    from rltune.report import build_report

    try:
        index = build_report(run_dirs, out_dir)
    except FileNotFoundError as e:
        _fail(e)
    out.print(f"report: {index}", highlight=False, soft_wrap=True)


@app.command()
def doctor(ray: bool = typer.Option(True, help="Also look for a running Ray cluster.")) -> None:
    """Versions, devices, offline mode, DeepSpeed, Ray: each problem with its fix."""
    from rltune.doctor import run_checks

    t = Table(title="rltune doctor")
    for col in ("check", "status", "detail", "fix"):
        t.add_column(col)
    bad = 0
    for c in run_checks(check_ray=ray):
        status = "[green]ok[/]" if c.ok else ("[dim]-[/]" if c.ok is None else "[red]FAIL[/]")
        bad += c.ok is False
        from rich.markup import escape

        t.add_row(c.name, status, escape(c.detail), escape(c.fix if not c.ok else ""))
    out.print(t)
    if bad:
        raise typer.Exit(1)


@app.command()
def init(
    path: Path = typer.Argument(Path("recipe.yaml"), help="Where to write the starter recipe."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a starter recipe (task, model, reward) to edit."""
    from rltune.config.load import load_recipe

    if path.exists() and not force:
        err.print(f"{path} exists; pass --force to overwrite it")
        raise typer.Exit(1)
    src = Path(__file__).with_name("starter_recipe.yaml")
    path.write_text(src.read_text())
    load_recipe(path)  # the starter always validates
    out.print(f"wrote {path}: edit it, then `rltune validate {path}` and `rltune train {path}`")


def _eval_model(r, path: str) -> dict:
    from rltune.evaluation import evaluate_model

    return evaluate_model(r, path)


def _plan_line(r) -> str:
    return (f"prompts/step={r.rollout.prompts_per_step} samples/prompt={r.rollout.samples_per_prompt} "
            f"completions/step={r.rollout.batch_size} micro_batch={r.train.micro_batch_size} "
            f"accumulation={r.micro_batches} max_new_tokens={r.rollout.max_new_tokens} steps={r.run.steps}")


def _print_plan(r, trainer) -> None:
    if not r.logging.console:
        return
    n_params = sum(p.numel() for p in trainer.model.parameters())
    n_train = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    err.print(f"[bold]rltune[/] {r.run.name}: {_plan_line(r)}")
    from rltune.train.engines import describe_engines

    err.print(f"  model {n_params / 1e6:.2f}M params ({n_train / 1e6:.2f}M trained), {describe_engines(r)}, "
              f"run dir {trainer.run_dir}" + (f", resuming at step {trainer.step}" if trainer.step else ""))


def _print_summary(trainer, recipe: Path) -> None:
    from rltune.logging import read_metrics

    if trainer.stopped_by is not None:
        out.print(f"Resume with: rltune train {recipe} --resume", highlight=False, soft_wrap=True)
        return
    rows = [m for m in read_metrics(trainer.run_dir) if "eval/accuracy" in m]
    if len(rows) >= 2:
        out.print(f"held-out accuracy (greedy): before {rows[0]['eval/accuracy']:.3f} (step {rows[0]['step']}) -> "
                  f"after {rows[-1]['eval/accuracy']:.3f} (step {rows[-1]['step']})")
    steps = [m["time/step"] for m in read_metrics(trainer.run_dir) if "time/step" in m]
    if steps:
        model = trainer.run_dir / "final" if trainer.recipe.run.save_final else "not saved (run.save_final=false)"
        out.print(f"median s/step {sorted(steps)[len(steps) // 2]:.3f}; model: {model}; "
                  f"metrics: {trainer.run_dir / 'metrics.jsonl'}", highlight=False, soft_wrap=True)
    if trainer.best is not None:
        out.print(f"best held-out accuracy {trainer.best[0]:.3f} at step {trainer.best[1]}", highlight=False)
    out.print(f"report: rltune report {trainer.run_dir}   (then open {trainer.run_dir / 'report' / 'index.html'})",
              highlight=False, soft_wrap=True)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
