"""Calling conventions: users bring TRL-style and verl-style reward functions unchanged.

`adapt(fn)` returns a callable `(RewardInput) -> list[float | None]` for one of three styles:
  * native: `reward(inp: RewardInput)`; a parameter annotated `RewardInput` or named `inp`/`input`/`batch`
    (the classes in rewards/ are native);
  * trl:  `fn(prompts, completions, **kwargs)`; called with prompts=, completions=, completion_ids= and every
    dataset column as a keyword (TRL's convention). A parameter that is neither a standard argument nor a
    column is an error listing the columns: TRL's `**kwargs` would hide such a typo;
  * verl: `compute_score(data_source, solution_str, ground_truth, extra_info=None)`, called once per sample;
    it returns a float or a dict with "score" whose other numeric keys become metrics.
`async def` rewards work in every style (verl's per-sample coroutines run concurrently).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import numbers
import threading
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, Callable

from rltune.reward.api import RewardInput

__all__ = ["adapt", "detect_style", "Adapted", "Scores", "RewardError", "SampleError", "row"]

_NATIVE_NAMES = {"inp", "input", "batch"}
_TRL_STANDARD = {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric"}


class RewardError(RuntimeError):
    """A reward failed, returned bad values, or is wired wrongly (names the reward and the sample)."""


class SampleError(Exception):
    """Raised by a per-sample adapter: `error` happened on sample `index` (the manager formats it)."""

    def __init__(self, index: int, error: BaseException):
        super().__init__(f"sample {index}: {type(error).__name__}: {error}")
        self.index, self.error = index, error


class Scores(list):
    """A reward's per-sample values plus extras: `extras[key]` is a per-sample list (verl dict returns),
    `metrics[key]` a float (TRL `log_metric`). The manager logs both as `reward/<name>/<key>`."""

    def __init__(self, values=(), extras: dict[str, list] | None = None, metrics: dict[str, float] | None = None):
        super().__init__(values)
        self.extras = extras or {}
        self.metrics = metrics or {}


def row(inp: RewardInput, i: int) -> RewardInput:
    """The one-sample RewardInput of sample `i` (used to find which sample makes a reward fail)."""
    return replace(
        inp,
        prompts=inp.prompts[i : i + 1],
        completions=inp.completions[i : i + 1],
        completion_ids=inp.completion_ids[i : i + 1],
        meta={k: v[i : i + 1] for k, v in inp.meta.items()},
        images=None if inp.images is None else inp.images[i : i + 1],
    )


def run_sync(awaitable: Any) -> Any:
    """Run a coroutine to completion, also when the calling thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_as_coroutine(awaitable))
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["out"] = asyncio.run(_as_coroutine(awaitable))
        except BaseException as e:  # re-raised in the caller's thread
            box["err"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]
    return box["out"]


async def _as_coroutine(awaitable: Any) -> Any:
    return await awaitable


def _name_of(fn: Any) -> str:
    inner = fn.func if isinstance(fn, functools.partial) else fn
    return getattr(inner, "__name__", type(inner).__name__)


def _params(fn: Any) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None


def detect_style(fn: Any) -> str:
    """'trl' (a `completions` parameter), 'verl' (a `solution_str` parameter) or 'native'."""
    if inspect.isclass(fn):
        raise RewardError(f"reward {_name_of(fn)!r} is a class; pass an instance (plugins.build makes one)")
    params = _params(fn)
    if params is None:
        return "native"
    if "completions" in params:
        return "trl"
    if "solution_str" in params:
        return "verl"
    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if len(required) == 1 or (not required and positional):
        p = (required or positional)[0]
        ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        if p.name in _NATIVE_NAMES or str(ann).rsplit(".", 1)[-1] == "RewardInput":
            return "native"
    raise RewardError(
        f"cannot tell how to call reward {_name_of(fn)!r} with signature {inspect.signature(fn)}: expected "
        "native `(inp: RewardInput)`, TRL-style `(prompts, completions, **kwargs)` or verl-style "
        "`(data_source, solution_str, ground_truth, extra_info=None)`; set `style:` in the recipe"
    )


class Adapted:
    """`fn` wrapped as `(RewardInput) -> list[float | None]`; `style` says how it is called."""

    def __init__(self, fn: Callable[..., Any], style: str, name: str):
        self.fn, self.style, self.name = fn, style, name
        params = _params(fn) or {}
        self._var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
        self._params = params
        # keywords already bound by functools.partial (recipe `args:`) are not overridden by columns
        self._bound = set(fn.keywords) if isinstance(fn, functools.partial) else set()

    def __repr__(self) -> str:
        return f"Adapted({self.name!r}, style={self.style!r})"

    def __call__(self, inp: RewardInput) -> list[float | None]:
        if self.style == "native":
            out = self.fn(inp)
            return run_sync(out) if inspect.isawaitable(out) else out
        if self.style == "trl":
            return self._call_trl(inp)
        return self._call_verl(inp)

    # -------------------------------------------------------------------------------------------- trl
    def _call_trl(self, inp: RewardInput) -> list[float | None]:
        metrics: dict[str, float] = {}
        standard = {
            "prompts": inp.prompts,
            "completions": inp.completions,
            "completion_ids": inp.completion_ids,
            "trainer_state": SimpleNamespace(global_step=inp.step),
            "log_metric": lambda key, value: metrics.__setitem__(key, float(value)),
            "log_extra": lambda key, values: None,  # TRL's completions table; rltune has none
        }
        columns = {k: v for k, v in inp.meta.items() if k not in _TRL_STANDARD and k not in self._bound}
        unknown = [n for n, p in self._params.items()
                   if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty
                   and n not in _TRL_STANDARD and n not in columns]
        if unknown:
            raise RewardError(
                f"reward {self.name!r} takes parameter {unknown[0]!r}, which is neither a standard argument "
                f"({', '.join(sorted(_TRL_STANDARD))}) nor a dataset column (available columns: "
                f"{', '.join(sorted(inp.meta)) or 'none'}); rename it or give it a default"
            )
        kwargs = {**columns, **standard}
        if self._var_kw:  # like TRL: everything, except the logging callbacks unless named
            kwargs = {k: v for k, v in kwargs.items() if k not in ("log_metric", "log_extra") or k in self._params}
        else:
            kwargs = {k: v for k, v in kwargs.items() if k in self._params}
        out = self.fn(**kwargs)
        out = run_sync(out) if inspect.isawaitable(out) else out
        if metrics:
            return Scores(out, getattr(out, "extras", None), {**getattr(out, "metrics", {}), **metrics})
        return out

    # ------------------------------------------------------------------------------------------- verl
    def _call_verl(self, inp: RewardInput) -> list[float | None]:
        meta = inp.meta
        gt_col = "ground_truth" if "ground_truth" in meta else "answer" if "answer" in meta else None
        takes = (lambda k: self._var_kw or k in self._params)
        if gt_col is None and takes("ground_truth"):
            raise RewardError(f"verl-style reward {self.name!r} needs a `ground_truth` or `answer` column "
                              f"(available columns: {', '.join(sorted(meta)) or 'none'})")
        others = [k for k in meta if k not in (gt_col, "data_source")]
        results: list[Any] = [None] * len(inp)
        pending: dict[int, Any] = {}
        for i, completion in enumerate(inp.completions):
            kwargs = {
                "data_source": meta["data_source"][i] if "data_source" in meta else "",
                "solution_str": completion,
                "ground_truth": meta[gt_col][i] if gt_col else None,
                "extra_info": {k: meta[k][i] for k in others},
            }
            try:
                out = self.fn(**{k: v for k, v in kwargs.items() if takes(k)})
            except Exception as e:
                _close(pending.values())
                raise SampleError(i, e) from e
            if inspect.isawaitable(out):
                pending[i] = out
            else:
                results[i] = out
        if pending:
            outs = run_sync(_gather(list(pending.values())))
            for i, out in zip(pending, outs):
                if isinstance(out, BaseException):
                    raise SampleError(i, out) from out
                results[i] = out
        return _unpack_verl(results)


async def _gather(aws: list[Any]) -> list[Any]:
    return await asyncio.gather(*aws, return_exceptions=True)


def _close(aws: Any) -> None:
    for aw in aws:  # avoid "coroutine was never awaited" warnings when a sync sample fails first
        if inspect.iscoroutine(aw):
            aw.close()


def _unpack_verl(results: list[Any]) -> Scores:
    """verl returns a number or {"score": x, **extras}; numeric extras become per-sample lists."""
    values: list[Any] = []
    extras: dict[str, list] = {}
    for i, r in enumerate(results):
        if isinstance(r, dict):
            if "score" not in r:
                raise SampleError(i, KeyError(f"verl-style dict return has no 'score' key (keys: {sorted(r)})"))
            values.append(r["score"])
            for k, v in r.items():
                if k != "score" and isinstance(v, numbers.Real):
                    extras.setdefault(k, [None] * len(results))[i] = float(v)
        else:
            values.append(r)
    return Scores(values, extras)


def adapt(fn: Callable[..., Any], style: str = "auto", name: str | None = None) -> Adapted:
    """Wrap `fn` as `(RewardInput) -> list[float | None]`; `style` is auto|native|trl|verl."""
    if style not in ("auto", "native", "trl", "verl"):
        raise RewardError(f"unknown reward style {style!r}; expected auto, native, trl or verl")
    if not callable(fn):
        raise RewardError(f"reward {name or fn!r} is a {type(fn).__name__}, not a callable")
    name = name or _name_of(fn)
    return Adapted(fn, detect_style(fn) if style == "auto" else style, name)
