"""Code-execution reward: runs the completion's Python in a sandbox and compares what it prints.

Backends (rltune/reward/sandbox.py; docs/rewards.md): `bwrap` (default: bubblewrap namespaces on this machine),
`http` (a SandboxFusion-compatible service at `url`), `local` (a plain subprocess). Without a working sandbox the
reward refuses to start unless the recipe says `unsafe_local: true`, which then runs model-written code as the
trainer's user with only rlimits around it. A crash, timeout or limit hit scores 0.0, never the run. The
programs of a batch run `max_parallel` at a time.

>>> r = CodeExec(column="answer", unsafe_local=True)
>>> from rltune.reward import RewardInput
>>> r(RewardInput(prompts=["", ""], completions=["print(2+3)", "while True: pass"], completion_ids=[[], []],
...               meta={"answer": ["5", "5"]}))
[1.0, 0.0]
"""

from __future__ import annotations

import os
import re
from typing import Literal

from rltune.reward.api import RewardInput
from rltune.reward.sandbox import Limits, make_sandbox, run_many

_FENCE = re.compile(r"```(?:python)?\n(.*?)```", re.DOTALL)


class CodeExec:
    """1.0 when the program in the completion (a ```python fence, else the whole text) prints the expected
    output (the `column` value, whitespace-stripped); 0.0 otherwise, including crashes and limit hits."""

    def __init__(self, column: str = "answer", backend: Literal["bwrap", "http", "local"] = "bwrap",
                 url: str | None = None, unsafe_local: bool = False, cpu_s: int = 2, mem_mb: int = 512,
                 timeout_s: float = 5.0, max_procs: int = 16, max_parallel: int | None = None):
        self.column = column
        self.sandbox = make_sandbox(backend, url, unsafe_local,
                                    Limits(cpu_s=cpu_s, mem_mb=mem_mb, timeout_s=timeout_s, max_procs=max_procs))
        self.max_parallel = max_parallel or min(8, os.cpu_count() or 1)

    def __call__(self, inp: RewardInput) -> list[float | None]:
        programs = [m.group(1) if (m := _FENCE.search(c)) else c for c in inp.completions]
        results = run_many(self.sandbox, programs, self.max_parallel)
        return [float(r.returncode == 0 and r.stdout.strip() == str(expected).strip())
                for r, expected in zip(results, inp.meta[self.column])]
