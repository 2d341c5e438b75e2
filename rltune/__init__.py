"""rltune: RL post-training from one typed YAML recipe."""

from rltune.config.load import load_recipe
from rltune.config.schema import Recipe

__version__ = "0.1.0"


def train(recipe: Recipe, **kwargs):
    """Run a recipe end to end (see rltune.trainer.Trainer); returns the last step's metrics."""
    from rltune._env import apply_defaults
    from rltune.trainer import train as _train

    apply_defaults()

    return _train(recipe, **kwargs)


__all__ = ["Recipe", "load_recipe", "train", "__version__"]
