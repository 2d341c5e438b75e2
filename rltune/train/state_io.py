"""The training state of a checkpoint in formats that cannot run code when read.

A pickle (`torch.save`) runs whatever its bytes say on load, and the checksum manifest next to it does not help:
whoever can write the run directory can rewrite both. So the state (step, data position, RNG states, optimizer
and scheduler, modifier state) is split into `state.safetensors` (every tensor and numpy array) and `state.json`
(the structure, with each tensor replaced by its key). Reading either runs no code.

JSON lacks tuples, non-string dict keys and numpy values; they are tagged (`{"__tuple__": [...]}`, ...) so that a
resumed run gets back exactly what it saved (`random.setstate` needs tuples, optimizer state has int keys).

Checkpoints written before this format (`state.pt`) are read with `torch.load(weights_only=True)` and only the
numpy types the RNG state holds allowed; anything else in them is refused, not run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"
LEGACY_STATE = "state.pt"
_TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__dict__", "__npscalar__")


class StateFormatError(ValueError):
    """The state holds a value these formats cannot store, or a file is not what rltune writes."""


def save_state(state: dict[str, Any], folder: Path) -> None:
    """Write `state` as folder/state.json + folder/state.safetensors."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}

    def put(t: torch.Tensor) -> str:
        # A copy: safetensors refuses tensors that share memory (views of one buffer, tied weights).
        t = t.detach().to("cpu", copy=True).contiguous()
        name = f"t{len(tensors)}"
        tensors[name] = t
        return name

    def enc(v: Any, where: str) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)) and not isinstance(v, np.generic):
            return v
        if isinstance(v, torch.Tensor):
            return {"__tensor__": put(v)}
        if isinstance(v, np.ndarray):
            if v.dtype == object:
                raise StateFormatError(f"checkpoint state at {where}: a numpy array of Python objects")
            return {"__ndarray__": put(torch.from_numpy(np.ascontiguousarray(v)))}
        if isinstance(v, np.generic):
            return {"__npscalar__": v.dtype.str, "value": v.item()}
        if isinstance(v, tuple):
            return {"__tuple__": [enc(x, f"{where}[{i}]") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [enc(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, dict):
            if all(isinstance(k, str) and k not in _TAGS for k in v):
                return {k: enc(x, f"{where}.{k}") for k, x in v.items()}
            return {"__dict__": [[enc(k, where), enc(x, f"{where}.{k}")] for k, x in v.items()]}
        raise StateFormatError(
            f"checkpoint state at {where}: a {type(v).__name__} cannot be stored safely. A state_dict() may hold "
            "only None, bool, int, float, str, lists, tuples, dicts, torch tensors and numpy arrays/scalars."
        )

    doc = {"format": 1, "state": enc(state, "state")}
    save_file(tensors, str(folder / STATE_TENSORS))
    (folder / STATE_JSON).write_text(json.dumps(doc))


def load_state(folder: Path) -> dict[str, Any]:
    """Read what save_state wrote (or a legacy state.pt, safely). Raises StateFormatError naming the problem."""
    if not (folder / STATE_JSON).is_file():
        if (folder / LEGACY_STATE).is_file():
            return _load_legacy(folder / LEGACY_STATE)
        raise StateFormatError(f"{folder} has no {STATE_JSON}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        doc = json.loads((folder / STATE_JSON).read_text())
        tensors = load_file(str(folder / STATE_TENSORS), device="cpu")
    except (OSError, ValueError, SafetensorError) as e:
        raise StateFormatError(f"{folder}: unreadable training state ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != 1:
        raise StateFormatError(f"{folder / STATE_JSON}: not a training state rltune wrote (format 1)")

    def dec(v: Any) -> Any:
        if isinstance(v, list):
            return [dec(x) for x in v]
        if not isinstance(v, dict):
            return v
        if "__tensor__" in v:
            return tensors[v["__tensor__"]]
        if "__ndarray__" in v:
            return tensors[v["__ndarray__"]].numpy()
        if "__npscalar__" in v:
            return np.dtype(v["__npscalar__"]).type(v["value"])
        if "__tuple__" in v:
            return tuple(dec(x) for x in v["__tuple__"])
        if "__dict__" in v:
            return {dec(k): dec(x) for k, x in v["__dict__"]}
        return {k: dec(x) for k, x in v.items()}

    try:
        return dec(doc["state"])
    except (KeyError, TypeError, ValueError) as e:
        raise StateFormatError(f"{folder / STATE_JSON}: malformed training state ({type(e).__name__}: {e})") from None


def _load_legacy(path: Path) -> dict[str, Any]:
    # The only non-tensor types an rltune state.pt held are numpy's RNG state pieces; these constructors build
    # arrays and dtypes and call nothing else.
    import pickle

    allowed = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), type(np.dtype(np.float64)),
               type(np.dtype(np.int64)), _np_reconstruct()]
    try:
        with allow_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StateFormatError(
            f"{path} (a pickle from an older rltune) holds something other than tensors, plain values and numpy "
            f"RNG state, so it was not loaded: a pickle can run code when read ({first}). If you did not write "
            "this checkpoint, treat the run directory as tampered with; else start afresh with --overwrite."
        ) from None


def allow_globals(types: list):
    """torch.load(weights_only=True) may build these types too (a context on torch >= 2.5, global on 2.4)."""
    import contextlib

    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals(types)
    torch.serialization.add_safe_globals(types)  # pragma: no cover - torch 2.4
    return contextlib.nullcontext()


def _np_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct
