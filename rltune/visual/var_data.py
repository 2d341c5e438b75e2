"""`builtin:var_toy`: class-conditional prompts for the tiny VAR demo (no downloads).

Each row is a class label with the pixel box its reward reads (docs/var.md, The CPU toy, made class-conditional):
class c asks for a bright `region`×`region` square in corner c of the `image`×`image` decoded picture (top-left,
top-right, bottom-left, bottom-right, then repeating); `same_corner` puts every class in the top-left corner, the
spec's unconditional toy. The reward (rltune_rewards.spatial.RegionBrightness) scores the mean value inside the box
and returns the box, from which var_mask builds its mask.
"""

from __future__ import annotations

Rows = list[dict]


def corner_box(c: int, image: int, region: int, same_corner: bool = False) -> list[int]:
    """[x0, y0, x1, y1] pixels of class c's corner square."""
    k = 0 if same_corner else c % 4
    x0 = 0 if k in (0, 2) else image - region
    y0 = 0 if k in (0, 1) else image - region
    return [x0, y0, x0 + region, y0 + region]


def var_toy(split: str, num_classes: int = 4, image: int = 32, region: int = 8, same_corner: bool = False,
            n_train: int = 256) -> Rows:
    """Rows {prompt, label, region}; the train split cycles through the classes, the test split has one per class."""
    n = num_classes if split == "test" else n_train
    return [{"prompt": f"class {i % num_classes}", "label": i % num_classes,
             "region": corner_box(i % num_classes, image, region, same_corner)} for i in range(n)]
