"""rltune: RL post-training from one typed YAML recipe."""

from rltune.config.load import load_recipe
from rltune.config.schema import Recipe

__version__ = "0.1.0"

# `train(recipe)` runs a recipe; it is the rltune.train subpackage itself, made callable (rltune/train/__init__.py),
# so importing rltune.train.* never replaces it.
from rltune import train  # noqa: E402

__all__ = ["Recipe", "load_recipe", "train", "__version__"]
