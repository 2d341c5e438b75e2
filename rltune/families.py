"""Policy families (model.kind) and what each one supports: the modifier hooks its step calls, the capabilities
it can give modifiers (`Modifier.requires`), and the recipe keys it honours.

The recipe check (`check_support`, run by `rltune validate` and by every trainer before it builds anything)
reads these manifests, so nothing in a recipe is silently ignored: a key set away from its default that the
family does not read, or a modifier with a hook the family never calls (or a requirement it cannot provide),
fails naming the key or modifier, the family, and what to do instead. The support table in docs/concepts.md and
docs/modifiers.md is generated from here (`python -m rltune.families`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

__all__ = ["SupportManifest", "FAMILIES", "manifest_for", "set_keys", "check_support",
           "modifier_hooks", "supported_families", "builtin_modifiers", "support_table"]

ALL_HOOKS = ("on_prompts", "shape_rewards", "shape_advantages", "token_weights", "extra_loss", "on_gradients",
             "on_step_end")


@dataclass(frozen=True)
class SupportManifest:
    """What one policy family honours. `keys` are dotted recipe paths; a path covers everything under it."""

    family: str                    # the model.kind value
    trainer: str                   # "module:Class" of its trainer (a Trainer with the family's PolicyFamily,
                                   # rltune/train/family.py; diffusion: its own RunLoop)
    hooks: frozenset[str]          # modifier hooks its step calls
    capabilities: frozenset[str]   # what it computes for modifiers on request (`requires`)
    keys: tuple[str, ...]          # recipe keys it reads; every other key must stay at its default
    advice: dict[str, str] = field(default_factory=dict)  # key prefix -> what to do instead

    def honours(self, key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in self.keys)

    def advice_for(self, key: str) -> str:
        hits = [k for k in self.advice if key == k or key.startswith(k + ".")]
        return self.advice[max(hits, key=len)] if hits else "remove it from the recipe"


# Keys every family reads: the run loop (run directory, signals, eval cadence, checkpoints), prompts, the
# rewards, the modifier list (checked by hooks below), logging, and the optimizer of the shared engine.
_COMMON = ("run", "model.kind", "data.source", "data.task_args", "data.split", "data.eval_source",
           "data.eval_split", "data.eval_size", "data.prompt_column", "data.answer_column", "data.shuffle",
           "rollout.prompts_per_step", "rollout.samples_per_prompt", "algo.advantage", "algo.scale_rewards",
           "algo.std_eps", "algo.gamma", "algo.lam", "train", "rewards", "modifiers", "logging")

TEXT = SupportManifest(
    family="causal_lm", trainer="rltune.trainer:Trainer", hooks=frozenset(ALL_HOOKS),
    capabilities=frozenset({"entropy", "old_logprobs", "ref_logprobs", "rollout_logprobs", "probe", "step_idx"}),
    keys=("run", "model", "data", "rollout", "algo", "train", "critic", "rewards", "modifiers", "env", "logging",
          "sft", "cluster"))

VAR = SupportManifest(
    family="var", trainer="rltune.visual.var_trainer:VarTrainer", hooks=frozenset(ALL_HOOKS),
    capabilities=frozenset({"entropy", "old_logprobs", "ref_logprobs", "rollout_logprobs", "var_layout"}),
    keys=_COMMON + ("model.var", "rollout.temperature", "rollout.top_p", "rollout.top_k", "algo.policy_loss",
                    "algo.ppo_epochs", "algo.mini_batches", "algo.clip_low", "algo.clip_high", "algo.dual_clip_c",
                    "algo.kl_coef", "algo.kl_estimator", "algo.loss_agg", "algo.loss_scale_constant",
                    "algo.entropy_coef"),
    advice={
        "critic": "VAR policies have no value model: use a critic-free algo.advantage (group_norm, rloo, ...)",
        "algo.kl_placement": "VAR puts the KL in the loss only: remove algo.kl_placement",
        "algo.kl_controller": "VAR uses a fixed KL coefficient: set algo.kl_coef and remove the controller keys",
        "algo.kl_target": "VAR uses a fixed KL coefficient: remove algo.kl_target",
        "algo.kl_horizon": "VAR uses a fixed KL coefficient: remove algo.kl_horizon",
        "algo.dynamic_sampling": "remove it; VAR steps sample prompts_per_step groups once",
        "algo.mask_truncated": "VAR rows are never truncated: remove it",
        "cluster": "VAR trains in one process: remove the cluster section",
        "rollout.max_new_tokens": "a VAR row has Σ h·w tokens fixed by model.var scales: remove it",
        "model.lora": "VAR trains all weights: remove model.lora",
        "sft": "VAR has no SFT warm start: remove the sft section",
        "env": "multi-turn environments are for text policies: remove env",
    })

DIFFUSION = SupportManifest(
    family="diffusion", trainer="rltune.visual.diffusion_trainer:DiffusionTrainer",
    hooks=frozenset({"on_prompts", "shape_advantages", "extra_loss", "on_gradients", "on_step_end"}),
    capabilities=frozenset({"images"}),
    keys=_COMMON + ("model.path", "model.lora", "model.dtype", "model.gradient_checkpointing", "model.diffusion",
                    "algo.ppo_epochs", "algo.mini_batches"),
    advice={
        "algo": "diffusion trains through its modifiers' extra_loss (alignprop, direct_align, ddpo): set the "
                "objective in their args (e.g. ddpo's clip_range) instead",
        "algo.kl_coef": "diffusion training has no KL term: regularise with a small model.lora, fewer run.steps "
                        "or AlignProp's truncation instead",
        "rollout": "diffusion sampling is set in model.diffusion (num_steps, eta, guidance_scale): remove it",
        "critic": "diffusion policies have no value model: use a critic-free algo.advantage",
        "cluster": "diffusion trains in one process: remove the cluster section",
        "sft": "diffusion has no SFT warm start: remove the sft section",
        "env": "multi-turn environments are for text policies: remove env",
    })

FAMILIES: dict[str, SupportManifest] = {m.family: m for m in (TEXT, VAR, DIFFUSION)}


def manifest_for(kind: str) -> SupportManifest:
    return FAMILIES[kind]


_REQUIRED = object()


def set_keys(section: BaseModel, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value, default) of every recipe key whose value differs from its schema default. Sections that
    always exist are walked into; an optional section that is present (critic, model.lora, ...) counts as one
    key; a required key counts as set."""
    out = []
    for name, f in type(section).model_fields.items():
        key, value = prefix + name, getattr(section, name)
        default = _REQUIRED if f.is_required() else f.get_default(call_default_factory=True)
        walk = isinstance(value, BaseModel) and (default is _REQUIRED or type(default) is type(value))
        if walk:
            out += set_keys(value, key + ".")
        elif default is _REQUIRED or value != default:
            out.append((key, value, None if default is _REQUIRED else default))
    return out


def modifier_hooks(cls: type) -> frozenset[str]:
    """The hooks a Modifier subclass overrides (the ones it needs the family to call)."""
    from rltune.modifiers.base import Modifier

    return frozenset(h for h in ALL_HOOKS if getattr(cls, h) is not getattr(Modifier, h))


def supported_families(cls: type) -> list[str]:
    """The families (model.kind values) whose step calls every hook of this Modifier class and provides what it
    requires."""
    return [f for f, m in FAMILIES.items() if _modifier_problem(cls, m) is None]


def _modifier_problem(cls: type, m: SupportManifest) -> str | None:
    """Why a modifier class cannot work in family m, or None."""
    missing_hooks = sorted(modifier_hooks(cls) - m.hooks - {"on_step_end"})
    if missing_hooks:
        return (f"its hook(s) {missing_hooks} are never called by the {m.family} step (it calls "
                f"{sorted(m.hooks)})")
    missing = sorted(set(getattr(cls, "requires", ())) - m.capabilities)
    if missing:
        return f"it requires {missing}, which the {m.family} step does not provide (it provides {sorted(m.capabilities)})"
    return None


def check_support(recipe: Any, modifier_classes: dict[str, type] | None = None,
                  base_dir: str | Path | None = None) -> None:
    """Fail when the recipe sets a key its family ignores, names a modifier the family cannot run, or names one
    whose `check_recipe` refuses the recipe (e.g. EMPG with one step per response).

    modifier_classes: {name: class} of the recipe's modifiers (resolved here from their specs when None). A
    requirement that an earlier modifier `provides` counts as provided."""
    from rltune.config.load import RecipeError
    from rltune.modifiers.pipeline import ModifierError

    m = FAMILIES[recipe.model.kind]
    ignored = [(k, v, d) for k, v, d in set_keys(recipe) if not m.honours(k)]
    if ignored:
        k, v, d = ignored[0]
        more = f" (also ignored: {', '.join(x for x, _, _ in ignored[1:])})" if len(ignored) > 1 else ""
        raise RecipeError(f"{k}={v!r} is ignored by model.kind: {m.family} (default {d!r}): "
                          f"{m.advice_for(k)}{more}")
    if modifier_classes is None:
        from rltune import plugins

        modifier_classes = {s.key: plugins.resolve(s.use, "modifiers", base_dir) for s in recipe.modifiers}
    provided = set(m.capabilities)
    for name, cls in modifier_classes.items():
        problem = _modifier_problem(cls, SupportManifest(m.family, m.trainer, m.hooks, frozenset(provided), ()))
        if problem:
            fits = supported_families(cls)
            where = f"use it with model.kind: {' or '.join(fits)}" if fits else "no built-in family runs it"
            raise ModifierError(f"modifier {name!r} does nothing with model.kind: {m.family}: {problem}; remove it "
                                f"from `modifiers:` ({where})")
        provided |= set(getattr(cls, "provides", ()))
    for spec in recipe.modifiers:
        check = getattr(modifier_classes.get(spec.key), "check_recipe", None)
        try:
            if check is not None:
                check(recipe, dict(spec.args))
        except ValueError as e:
            raise ModifierError(f"modifier {spec.key!r}: {e}") from None


def builtin_modifiers() -> dict[str, type]:
    """{name: class} of the modifiers this package ships (its pyproject's `rltune.modifiers` entry points, read from
    the source tree, so the table does not depend on what else is installed)."""
    import importlib
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    eps = tomllib.loads(pyproject.read_text())["project"]["entry-points"]["rltune.modifiers"]
    out = {}
    for name, target in sorted(eps.items()):
        module, attr = target.split(":")
        out[name] = getattr(importlib.import_module(module), attr)
    return out


def support_table() -> str:
    """The family × hook × capability × modifier table and the keys each family ignores (markdown), as in
    docs/concepts.md and docs/modifiers.md between the `support-table` markers."""
    fams = list(FAMILIES.values())
    head = "| | " + " | ".join(f"`{m.family}`" for m in fams) + " |\n|---|" + "---|" * len(fams) + "\n"
    rows = [f"| hook `{h}` | " + " | ".join("yes" if h in m.hooks else "—" for m in fams) + " |" for h in ALL_HOOKS]
    caps = sorted(set().union(*(m.capabilities for m in fams)))
    rows += [f"| provides `{c}` | " + " | ".join("yes" if c in m.capabilities else "—" for m in fams) + " |"
             for c in caps]
    for name, cls in builtin_modifiers().items():
        rows.append(f"| modifier `{name}` | " + " | ".join(
            "yes" if _modifier_problem(cls, m) is None else "—" for m in fams) + " |")
    keys = [f"- `{m.family}` reads every recipe key" + (" except " + ", ".join(f"`{k}`" for k in _unread(m))
            if _unread(m) else "") + "." for m in fams]
    return head + "\n".join(rows) + "\n\n" + "\n".join(keys) + "\n"


def _unread(m: SupportManifest) -> list[str]:
    """The schema's keys m does not read, collapsed to the shortest prefixes."""
    from rltune.config.schema import Recipe

    out: list[str] = []

    def walk(cls: type[BaseModel], prefix: str) -> None:
        for name, f in cls.model_fields.items():
            key = prefix + name
            if m.honours(key):
                continue
            if any(k.startswith(key + ".") for k in m.keys):
                sub = _section(f.annotation)
                if sub is not None:
                    walk(sub, key + ".")
                    continue
            out.append(key)

    walk(Recipe, "")
    return out


def _section(annotation: Any) -> type[BaseModel] | None:
    import typing

    for a in (annotation, *typing.get_args(annotation)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


START, END = "<!-- support-table:start (python -m rltune.families --write) -->", "<!-- support-table:end -->"
DOCS = ("docs/concepts.md", "docs/modifiers.md")


def docs_with_table(text: str) -> str:
    """`text` with the part between the markers replaced by the current support table."""
    i, j = text.index(START) + len(START), text.index(END)
    return text[:i] + "\n" + support_table() + text[j:]


if __name__ == "__main__":
    import sys

    if "--write" in sys.argv:
        root = Path(__file__).resolve().parents[1]
        for doc in DOCS:
            p = root / doc
            p.write_text(docs_with_table(p.read_text()))
    else:
        print(support_table(), end="")
