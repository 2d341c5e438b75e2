"""Prompt datasets through `datasets`: builtin tasks, local files, or hub names; and the resumable loader."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import datasets
import torch

from rltune.config.schema import DataConfig
from rltune.data.batch import PromptBatch
from rltune.data.tasks import TASKS

FILE_TYPES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class DataError(ValueError):
    pass


def load_rows(cfg: DataConfig, split: str, source: str | None = None, base_dir: str | Path = ".") -> datasets.Dataset:
    source = source or cfg.source
    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        if name not in TASKS:
            raise DataError(f"data.source={source!r}: unknown builtin task; available: {sorted(TASKS)}")
        fn = TASKS[name]
        try:
            inspect.signature(fn).bind(split, **cfg.task_args)
        except TypeError as e:
            params = [p for p in inspect.signature(fn).parameters if p != "split"]
            raise DataError(f"data.task_args for builtin:{name}: {e}; valid: {params}") from None
        ds = datasets.Dataset.from_list(fn(split, **cfg.task_args))
    else:
        path = Path(source) if Path(source).is_absolute() else Path(base_dir) / source
        if not path.exists() and Path(source).exists():
            path = Path(source)
        if path.suffix in FILE_TYPES:
            if not path.is_file():
                raise DataError(f"data file not found: {path} (paths are relative to the working directory)")
            if path.stat().st_size == 0:
                raise DataError(f"dataset {path} is empty (0 bytes); give a file with one row per prompt")
            if path.suffix == ".jsonl":
                _check_jsonl(path)
            try:
                ds = datasets.load_dataset(FILE_TYPES[path.suffix], data_files=str(path), split="train")
            except Exception as e:  # noqa: BLE001 - datasets raises many types for unreadable files
                raise DataError(f"could not read {path} as {FILE_TYPES[path.suffix]}: {type(e).__name__}: {e}") from None
        else:
            try:
                ds = datasets.load_dataset(source, split=split)
            except Exception as e:  # noqa: BLE001 - the hub raises many types; the message is what matters
                raise DataError(
                    f"could not load dataset {source!r} split {split!r}: {type(e).__name__}: {e}. Offline? Give a "
                    "local .jsonl/.parquet/.csv file or a builtin:<task> instead"
                ) from None
    if len(ds) == 0:
        raise DataError(f"dataset {source!r} ({split}) is empty")
    needed = [c for c in (cfg.prompt_column, cfg.answer_column) if c]
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise DataError(
            f"dataset {source!r} has no column(s) {missing}; its columns are {ds.column_names}. Map them with "
            "data.prompt_column / data.answer_column (answer_column: null if there is none)"
        )
    return ds


def _check_jsonl(path: Path) -> None:
    """One JSON object per line (datasets' own error for a line that is a list or a string names neither the
    file's line nor the fix)."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:  # also invalid UTF-8
                raise DataError(f"{path}, line {n}: not valid JSON ({e}); each line must be one JSON object such "
                                'as {"prompt": "...", "answer": "..."}') from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}, line {n}: a JSON {type(obj).__name__}, not an object; each line must be "
                                'one JSON object such as {"prompt": "...", "answer": "..."}')


def format_prompt(text: str, cfg: DataConfig, tokenizer: Any) -> str:
    if not cfg.chat_template:
        return text
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError("data.chat_template is true but the tokenizer has no chat template; set it to false")
    msgs = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + [
        {"role": "user", "content": text}
    ]
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


class PromptLoader:
    """Endless, seeded, resumable stream of prompt batches. Its whole state is `position` (prompts consumed):
    the order of epoch e is a permutation seeded by (seed, e), so it is recomputed on resume, never stored."""

    def __init__(self, ds: datasets.Dataset, cfg: DataConfig, tokenizer: Any, seed: int):
        self.ds, self.cfg, self.tok, self.seed = ds, cfg, tokenizer, seed
        self.position = 0
        self._epoch, self._order = -1, None

    def _order_of(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            n = len(self.ds)
            if self.cfg.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._order = torch.randperm(n, generator=g).tolist()
            else:
                self._order = list(range(n))
            self._epoch = epoch
        return self._order

    def next(self, batch_size: int) -> PromptBatch:
        idx = []
        for _ in range(batch_size):
            epoch, i = divmod(self.position, len(self.ds))
            idx.append(self._order_of(epoch)[i])
            self.position += 1
        rows = self.ds[idx] if idx else {}
        prompts = [format_prompt(p, self.cfg, self.tok) for p in rows[self.cfg.prompt_column]]
        return PromptBatch(prompts=prompts, meta={k: list(v) for k, v in rows.items()})

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, sd: dict[str, int]) -> None:
        self.position = int(sd["position"])
