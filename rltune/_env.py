"""Process defaults for every entry point (CLI and Python API): offline, and quiet progress bars."""

import os

_DEFAULTS = {
    # Offline by default: nothing in a run should reach a hub unless the user says so.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}


def apply_defaults() -> None:
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)
