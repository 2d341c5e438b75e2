"""The environment interface of multi-turn agent rollouts, and the guarded way the engine calls it.

An environment is any object with

    reset(row: dict) -> str                                   the first observation (appended to the prompt)
    step(action: str) -> (observation: str, reward: float, done: bool, info: dict)

where `row` is the prompt's dataset row (all columns) and `action` is the text of one model turn (EOS
stripped). Either method may be `async def`. Recipes name an environment like a reward or modifier (`env.use`:
an entry point in `rltune.envs`, `pkg.mod:Attr` or `path/file.py:Attr`); `env.args` go to its constructor,
and every episode gets a fresh instance, built in the process that runs it (never pickled).

`call_all` runs one reset/step per episode concurrently, each with its own deadline: a call that hangs or
raises, or returns the wrong shape, becomes an `EnvFailure` that ends that episode (reward 0), never the run.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import numbers
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from rltune.plugins import bind_args, resolve

__all__ = ["Environment", "StepResult", "EnvFailure", "env_factory", "call_all", "as_step_result"]


@runtime_checkable
class Environment(Protocol):
    def reset(self, row: dict[str, Any]) -> str: ...

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]: ...


@dataclass(frozen=True)
class StepResult:
    observation: str
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EnvFailure:
    """Why a reset/step call produced no usable result: `kind` is "timeout" or "error"; `reason` is for logs."""

    kind: str
    reason: str


def env_factory(spec: str, args: dict[str, Any] | None = None,
                base_dir: str | Path | None = None) -> Callable[[], Any]:
    """A zero-argument callable that builds one environment. Resolves the spec and binds `args` once, so
    a wrong spec or argument fails here (at engine construction), not inside an episode."""
    args = dict(args or {})
    obj = resolve(spec, "envs", base_dir)
    if not callable(obj):
        raise TypeError(f"env '{spec}' names a {type(obj).__name__}; expected a class or a factory function")
    bind_args(obj, args, spec)
    return functools.partial(obj, **args)


def _run(fn: Callable[[], Any]) -> Any:
    out = fn()
    if inspect.isawaitable(out):  # async env: each call gets its own loop in its own thread
        async def wait() -> Any:
            return await out
        out = asyncio.run(wait())
    return out


def call_all(fns: list[Callable[[], Any]], timeout_s: float | None) -> list[Any]:
    """Run every call concurrently (one daemon thread each) and return its value, or an EnvFailure when it
    raised or did not return within `timeout_s` (all calls share one deadline). A thread cannot be killed:
    a hung call is abandoned and may keep running in the background, so envs should not hold shared locks."""
    boxes: list[dict[str, Any]] = [{} for _ in fns]

    def target(fn: Callable[[], Any], box: dict[str, Any]) -> None:
        try:
            box["out"] = _run(fn)
        except BaseException as e:  # noqa: BLE001 - any failure of user code ends only its episode
            box["err"] = e

    threads = [threading.Thread(target=target, args=(f, b), daemon=True, name="rltune-env") for f, b in zip(fns, boxes)]
    for t in threads:
        t.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    out: list[Any] = []
    for t, box in zip(threads, boxes):
        t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            out.append(EnvFailure("timeout", f"did not return within env.timeout_s={timeout_s} s (abandoned)"))
        elif "err" in box:
            e = box["err"]
            out.append(EnvFailure("error", f"raised {type(e).__name__}: {e}"))
        else:
            out.append(box["out"])
    return out


def as_step_result(value: Any) -> StepResult | EnvFailure:
    """Check what step() returned: a 4-tuple (str, real, bool-like, dict | None), else an EnvFailure."""
    if isinstance(value, EnvFailure):
        return value
    if isinstance(value, StepResult):
        return value
    if not (isinstance(value, tuple) and len(value) == 4):
        return EnvFailure("error", f"step() returned {type(value).__name__}, expected (observation, reward, done, "
                          "info)")
    obs, reward, done, info = value
    if not isinstance(obs, str):
        return EnvFailure("error", f"step() returned an observation of type {type(obs).__name__}, expected str")
    if not isinstance(reward, numbers.Real) or reward != reward or abs(float(reward)) == float("inf"):
        return EnvFailure("error", f"step() returned reward {reward!r}, expected a finite float")
    return StepResult(obs, float(reward), bool(done), dict(info or {}))
