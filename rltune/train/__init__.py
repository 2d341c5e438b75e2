"""The update loop and the training engines (torch, DeepSpeed ZeRO ranks), critic, scoring and checkpoints.

`rltune.train` is also the Python API: `from rltune import train; train(recipe)` runs a recipe end to end.
Python binds a subpackage to its parent's attribute whenever one of its modules is imported, so a function
named `train` on `rltune` would be replaced by this package the first time `rltune.train.*` is imported. One
object under the name avoids that: this package is callable (its module class defines `__call__`).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path


class _CallablePackage(types.ModuleType):
    def __call__(self, recipe, base_dir: str | Path = ".", resume: bool = False, overwrite: bool = False,
                 allow_changes: bool = False) -> dict:
        """Run a recipe end to end (rltune.trainer.Trainer and the visual trainers); returns the last step's
        metrics. `base_dir` resolves the recipe's relative paths; `resume`/`overwrite`/`allow_changes` as the
        command line's --resume/--overwrite/--allow-changes."""
        from rltune._env import apply_defaults
        from rltune.trainer import train

        apply_defaults()
        return train(recipe, base_dir, resume=resume, overwrite=overwrite, allow_changes=allow_changes)


sys.modules[__name__].__class__ = _CallablePackage
