"""RewardManager: builds the recipe's rewards and turns their values into `scores[N,K]` and `rewards[N]`.

Semantics (the trainer relies on them):
  * A reward returns one value per completion; None means "not applicable" and becomes NaN in `scores`.
  * `rewards[i] = Σ_k weight_k · scores[i,k]` over the non-NaN entries. A row where every reward with a
    non-zero weight is n/a gets NaN: the trainer treats it as unscorable (not as 0).
  * A NaN/inf *returned* by a reward is an error (it usually means a bug), unlike None.
  * Every failure names the reward and, where it can be found, the sample with its prompt and completion:
    when a batch call raises quickly (< 1 s) the manager calls the reward once per sample to find the row.
  * `timeout_s` runs the call in a daemon thread and stops waiting after that long. A thread cannot be
    killed: the abandoned call may keep running (and holding what it holds) in the background.
  * `on_error="none"` logs a warning and scores the failing samples (or the batch) as n/a; it covers the
    reward's own failures, not wiring errors (an unknown column, an unusable signature), which always raise.
  * Values are checked for finiteness after the cast to float32 (1e300 would become inf there), and so is
    the weighted sum.
  * A reward that calls sys.exit or os._exit gets an error naming it instead of ending the trainer's process
    (os._exit is intercepted in the reward's own thread only; see `_exit_guard`). A reward that kills its
    process by a signal or a crash still ends it: run untrusted code through rewards/code_exec.py's sandbox.
  * Rewards run one after another; an async reward runs in its own event loop (verl-style samples
    concurrently).
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, Callable, Sequence

import torch

from rltune.config.schema import RewardSpec
from rltune.plugins import build
from rltune.reward.adapters import RewardError, SampleError, adapt, row
from rltune.reward.api import RewardInput

__all__ = ["RewardManager", "RewardResult", "RewardError"]

_log = logging.getLogger(__name__)
_LOCATE_IF_UNDER_S = 1.0    # a failed batch call faster than this is retried per sample to name the row
_LOCATE_DEADLINE_S = 10.0   # ... for at most this long
_F32_MAX = torch.finfo(torch.float32).max
_WARN_FIRST = 5             # on_error="none": warnings per reward before dropping to DEBUG


@dataclass(frozen=True)
class RewardResult:
    """scores [N,K] float32 (NaN = n/a), rewards [N] (NaN = unscorable row), names [K], and metrics:
    reward/<name>/mean (over scored samples; NaN if none), /na_frac, /error_frac (on_error="none" only),
    /<extra> (verl dict keys, TRL log_metric), and time/reward/<name> in seconds."""

    scores: torch.Tensor
    rewards: torch.Tensor
    metrics: dict[str, float]
    names: tuple[str, ...]
    # Every per-sample extra a reward returned (`Scores(values, extras={key: [N]})`), as `<name>/<key>`: numeric
    # extras are also logged as metrics; others (e.g. spatial metadata: boxes, saliency maps) ride along only.
    extras: dict[str, list] = field(default_factory=dict)


class _Timeout(Exception):
    pass


class _BadBatch(Exception):
    pass


class RewardManager:
    """Build each `RewardSpec` (entry point, dotted or file path; see rltune.plugins) and score batches."""

    def __init__(self, specs: Sequence[RewardSpec], base_dir: str | Path | None = None):
        self.specs = list(specs)
        self.names = tuple(s.metric_name for s in self.specs)
        dup = sorted({n for n in self.names if self.names.count(n) > 1})
        if dup:
            raise ValueError(f"reward names must be unique; repeated: {dup} (set `name:` on each)")
        self.fns = [adapt(build(s.use, "rewards", s.args, base_dir), s.style, s.metric_name) for s in self.specs]
        w = torch.tensor([s.weight for s in self.specs], dtype=torch.float32)
        self.weights = w
        self._active = (w != 0) if bool((w != 0).any()) else torch.ones_like(w, dtype=torch.bool)
        self._failures: Counter[str] = Counter()

    def __call__(self, inp: RewardInput) -> RewardResult:
        n = _check_input(inp)
        cols, metrics, carried = [], {}, {}
        for spec, fn in zip(self.specs, self.fns):
            t0 = perf_counter()
            values, extras, extra_metrics, n_err = self._score(spec, fn, inp)
            col = torch.tensor(values, dtype=torch.float32).reshape(n)
            cols.append(col)
            name, ok = spec.metric_name, ~torch.isnan(col)
            for key, vals in extras.items():
                carried[f"{name}/{key}"] = list(vals)
                if not all(v is None or isinstance(v, numbers.Real) for v in vals):
                    continue  # spatial or other non-numeric metadata: carried, not logged
                nums = [v for v in vals if v is not None and math.isfinite(v)]
                metrics[f"reward/{name}/{key}"] = sum(nums) / len(nums) if nums else math.nan
            metrics.update({f"reward/{name}/{k}": float(v) for k, v in extra_metrics.items()})
            metrics[f"reward/{name}/mean"] = col[ok].mean().item() if bool(ok.any()) else math.nan
            metrics[f"reward/{name}/na_frac"] = 1.0 - ok.float().mean().item() if n else 0.0
            if spec.on_error == "none":
                metrics[f"reward/{name}/error_frac"] = n_err / n if n else 0.0
            metrics[f"time/reward/{name}"] = perf_counter() - t0
        scores = torch.stack(cols, dim=1) if cols else torch.empty(n, 0)
        valid = ~torch.isnan(scores)
        weighted = torch.where(valid, scores * self.weights, torch.zeros(())).sum(dim=1)
        scorable = (valid & self._active).any(dim=1)
        rewards = torch.where(scorable, weighted, torch.full_like(weighted, math.nan))
        if not bool(torch.isfinite(rewards[scorable]).all()):
            raise RewardError(f"the weighted sum of rewards {list(self.names)} (weights {self.weights.tolist()}) "
                              "overflows float32 to inf; scale the rewards or their weights down")
        return RewardResult(scores, rewards, metrics, self.names, carried)

    # ------------------------------------------------------------------------------------ one reward
    def _score(self, spec: RewardSpec, fn: Callable, inp: RewardInput):
        """-> (values [N] with NaN, extras {key: [N]}, metrics {key: float}, number of failed samples)."""
        n, name = len(inp), spec.metric_name
        t0 = perf_counter()
        try:
            out = _call(fn, inp, spec.timeout_s)
        except RewardError as e:
            raise _named(e, name) from e
        except _Exited as e:
            self._fail(spec, f"reward '{name}' called {e.how}({e.code}) on a batch of {n} completions; a reward must "
                       "return its values (None = not applicable), not end the process")
            return [math.nan] * n, {}, {}, n
        except _Timeout:
            self._fail(spec, f"reward '{name}' did not return within timeout_s={spec.timeout_s} s on a batch of "
                       f"{n} completions; the call was abandoned (a thread cannot be killed: it may still run "
                       "in the background)")
            return [math.nan] * n, {}, {}, n
        except Exception as e:
            return self._locate(spec, fn, inp, e, perf_counter() - t0)
        try:
            values, extras, extra_metrics, bad = _check(name, out, inp)
        except _BadBatch as e:
            self._fail(spec, str(e))
            return [math.nan] * n, {}, {}, n
        for msg in bad.values():
            self._fail(spec, msg)
        return values, extras, extra_metrics, len(bad)

    def _locate(self, spec: RewardSpec, fn: Callable, inp: RewardInput, err: Exception, elapsed: float):
        """The batch call raised: name the sample (call per sample when cheap), then raise or score n/a."""
        n, name = len(inp), spec.metric_name
        if isinstance(err, SampleError) and spec.on_error == "raise":  # verl-style: the adapter knows it
            raise RewardError(_raised(name, err.error, inp, err.index)) from err.error
        batch_msg = f"reward '{name}' raised {type(err).__name__} on a batch of {n} completions: {err}"
        if not isinstance(err, SampleError) and (elapsed > _LOCATE_IF_UNDER_S or n == 1):
            self._fail(spec, batch_msg if n > 1 else _raised(name, err, inp, 0), err)
            return [math.nan] * n, {}, {}, n
        values, extras, n_err = [math.nan] * n, {}, 0
        deadline = perf_counter() + _LOCATE_DEADLINE_S
        for i in range(n):
            if perf_counter() > deadline:
                self._fail(spec, batch_msg + " (no single failing sample found in time)", err)
                return values, extras, {}, n_err + n - i
            sample = row(inp, i)
            try:
                v, ex, _, bad = _check(name, _call(fn, sample, spec.timeout_s), sample, base=i)
            except RewardError as e:
                raise _named(e, name) from e
            except _Exited as e:
                raise RewardError(f"reward '{name}' called {e.how}({e.code}) on sample {i} {_where(inp, i)}; a reward "
                                  "must return its values, not end the process") from None
            except _Timeout:
                self._fail(spec, f"reward '{name}' did not return within timeout_s={spec.timeout_s} s on sample "
                           f"{i} {_where(inp, i)}; the call was abandoned")
                n_err += 1
                continue
            except (_BadBatch, Exception) as e:
                e0 = e.error if isinstance(e, SampleError) else e
                self._fail(spec, str(e) if isinstance(e, _BadBatch) else _raised(name, e0, inp, i), e0)
                n_err += 1
                continue
            for msg in bad.values():
                self._fail(spec, msg)
            n_err += len(bad)
            values[i] = v[0]
            for key, vals in ex.items():
                extras.setdefault(key, [None] * n)[i] = vals[0]
        if n_err == 0:
            used = "" if spec.on_error == "raise" else "; the per-sample values are used"
            self._fail(spec, f"{batch_msg} (each sample alone succeeded{used})", err)
        return values, extras, {}, n_err

    def _fail(self, spec: RewardSpec, msg: str, cause: BaseException | None = None) -> None:
        """Raise a RewardError (on_error="raise") or log a warning and let the caller score n/a."""
        if spec.on_error == "raise":
            raise RewardError(msg) from cause
        name = spec.metric_name
        self._failures[name] += 1
        count = self._failures[name]
        if count <= _WARN_FIRST:
            tail = (f" (further failures of reward '{name}' are logged at DEBUG; see reward/{name}/error_frac)"
                    if count == _WARN_FIRST else "")
            _log.warning("%s; scored as n/a (on_error='none')%s", msg, tail)
        else:
            _log.debug("%s; scored as n/a (on_error='none')", msg)


# ------------------------------------------------------------------------------------------- helpers
class _Exited(BaseException):
    """A reward called sys.exit / os._exit (BaseException: the reward's own `except Exception` cannot eat it)."""

    def __init__(self, how: str, code: Any):
        super().__init__(how, code)
        self.how, self.code = how, code


_REWARD_THREADS: set[int] = set()  # idents of threads running a reward call right now
_REAL_EXIT = os._exit
_MAIN_PID = os.getpid()


def _exit_guard(code: int = 0) -> None:
    """os._exit while rltune's guard is installed: an error in a reward's thread, the real exit anywhere else
    (other threads, forked children: multiprocessing ends its children with os._exit)."""
    if os.getpid() == _MAIN_PID and threading.get_ident() in _REWARD_THREADS:
        raise _Exited("os._exit", code)
    _REAL_EXIT(code)


def _guarded(fn: Callable, inp: RewardInput) -> Any:
    global _MAIN_PID
    if os._exit is not _exit_guard:  # installed once and left in place: an abandoned call may exit later
        _MAIN_PID, os._exit = os.getpid(), _exit_guard
    me = threading.get_ident()
    _REWARD_THREADS.add(me)
    try:
        return fn(inp)
    except SystemExit as e:
        raise _Exited("sys.exit", e.code) from None
    finally:
        _REWARD_THREADS.discard(me)


def _call(fn: Callable, inp: RewardInput, timeout_s: float | None) -> Any:
    if timeout_s is None:
        return _guarded(fn, inp)
    box: dict[str, Any] = {}
    grad = torch.is_grad_enabled()  # grad mode is per thread: carry the caller's (no_grad) into the call

    def target() -> None:
        try:
            with torch.set_grad_enabled(grad):
                box["out"] = _guarded(fn, inp)
        except BaseException as e:  # re-raised in the caller's thread
            box["err"] = e

    # A daemon thread: an abandoned call must not keep the interpreter from exiting.
    t = threading.Thread(target=target, daemon=True, name=f"rltune-reward-{getattr(fn, 'name', 'fn')}")
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise _Timeout()
    if "err" in box:
        raise box["err"]
    return box["out"]


def _check(name: str, out: Any, inp: RewardInput, base: int = 0):
    """Validate a reward's return -> (values, extras, metrics, {sample: message}); _BadBatch if unusable."""
    n = len(inp)
    extras, extra_metrics = dict(getattr(out, "extras", {}) or {}), dict(getattr(out, "metrics", {}) or {})
    if hasattr(out, "tolist") and not isinstance(out, (list, tuple)):  # torch / numpy arrays
        out = out.tolist()
    if not isinstance(out, (list, tuple)):
        raise _BadBatch(f"reward '{name}' returned a {type(out).__name__}, expected a list of {n} floats "
                        "(None = not applicable)")
    if len(out) != n:
        raise _BadBatch(f"reward '{name}' returned {len(out)} values for {n} completions")
    for key, vals in extras.items():
        if len(vals) != n:
            raise _BadBatch(f"reward '{name}' returned extra '{key}' with {len(vals)} values for {n} completions")
    values, bad = [], {}
    for j, v in enumerate(out):
        i = base + j
        if v is None:
            values.append(math.nan)
        elif isinstance(v, numbers.Real):
            values.append(float(v))
            if not math.isfinite(values[-1]):
                bad[i] = (f"reward '{name}' returned {values[-1]} at sample {i} {_where(inp, j)}; "
                          "return None to mark a sample as not applicable")
                values[-1] = math.nan
            elif abs(values[-1]) > _F32_MAX:  # finite in float64, inf once stored in the float32 scores
                bad[i] = (f"reward '{name}' returned {values[-1]:g} at sample {i} {_where(inp, j)}, which is inf in "
                          "float32 (rewards are float32: |r| < 3.4e38); scale the reward down")
                values[-1] = math.nan
        else:
            values.append(math.nan)
            bad[i] = (f"reward '{name}' returned a {type(v).__name__} ({_short(v)}) at sample {i} "
                      f"{_where(inp, j)}; expected a float or None")
    return values, extras, extra_metrics, bad


def _check_input(inp: RewardInput) -> int:
    n = len(inp.completions)
    fields = {"prompts": inp.prompts, "completion_ids": inp.completion_ids,
              **{f"meta[{k!r}]": v for k, v in inp.meta.items()}}
    for field, v in fields.items():
        if len(v) != n:
            raise ValueError(f"RewardInput.{field} has {len(v)} entries for {n} completions")
    return n


def _short(x: Any, limit: int = 60) -> str:
    s = repr(x)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _where(inp: RewardInput, i: int) -> str:
    return f"(prompt {_short(inp.prompts[i])}, completion {_short(inp.completions[i])})"


def _raised(name: str, e: BaseException, inp: RewardInput, i: int) -> str:
    return f"reward '{name}' raised {type(e).__name__} on sample {i} {_where(inp, i)}: {e}"


def _named(e: RewardError, name: str) -> RewardError:
    msg = str(e)
    return RewardError(msg if f"'{name}'" in msg else f"reward '{name}': {msg}")
