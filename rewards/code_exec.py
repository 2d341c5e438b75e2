"""Code-execution reward: runs the completion's Python in a sandboxed subprocess and compares its output.

The child runs `python -I -S` (isolated: no user site, no env-based imports) in an empty temp directory with
CPU-time, address-space and file-size limits (RLIMIT_*), a wall-clock timeout, a scrubbed environment, and
no network where the platform allows it (a fresh network namespace via `unshare -n` when available; else
socket creation is disabled inside the child). A crash, timeout or limit hit scores 0.0, never the run.
The filesystem is not isolated beyond the working directory and RLIMIT_FSIZE: run untrusted code as an
unprivileged user (or in a container) when that matters.

>>> r = CodeExec(column="answer")
>>> from rltune.reward import RewardInput
>>> r(RewardInput(prompts=["", ""], completions=["print(2+3)", "while True: pass"], completion_ids=[[], []],
...               meta={"answer": ["5", "5"]}))
[1.0, 0.0]
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile

from rltune.reward.api import RewardInput

_FENCE = re.compile(r"```(?:python)?\n(.*?)```", re.DOTALL)
# Prepended to the program: no sockets even without a network namespace.
_NO_NET = "import socket as _s\ndef _deny(*a, **k): raise OSError('network disabled in the sandbox')\n" \
          "_s.socket = _deny; _s.create_connection = _deny\ndel _s, _deny\n"


def _limits(cpu_s: int, mem_mb: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (mem_mb << 20, mem_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        os.setsid()

    return apply


def run_sandboxed(code: str, cpu_s: int = 2, mem_mb: int = 512, timeout_s: float = 5.0) -> tuple[int, str]:
    """(returncode, stdout) of `code` run in the sandbox; returncode -1 on timeout."""
    with tempfile.TemporaryDirectory(prefix="rltune-sandbox-") as tmp:
        cmd = [sys.executable, "-I", "-S", "-c", _NO_NET + code]
        if shutil.which("unshare") and os.geteuid() == 0:
            cmd = ["unshare", "-n", *cmd]
        try:
            p = subprocess.run(cmd, cwd=tmp, env={"PATH": "/usr/bin:/bin", "HOME": tmp}, capture_output=True,
                               text=True, timeout=timeout_s, preexec_fn=_limits(cpu_s, mem_mb))
        except subprocess.TimeoutExpired:
            return -1, ""
        return p.returncode, p.stdout


class CodeExec:
    """1.0 when the program in the completion (a ```python fence, else the whole text) prints the expected
    output (the `column` value, whitespace-stripped); 0.0 otherwise, including crashes and limit hits."""

    def __init__(self, column: str = "answer", cpu_s: int = 2, mem_mb: int = 512, timeout_s: float = 5.0):
        self.column, self.cpu_s, self.mem_mb, self.timeout_s = column, cpu_s, mem_mb, timeout_s

    def __call__(self, inp: RewardInput) -> list[float | None]:
        out: list[float | None] = []
        for completion, expected in zip(inp.completions, inp.meta[self.column]):
            m = _FENCE.search(completion)
            code = m.group(1) if m else completion
            rc, stdout = run_sandboxed(code, self.cpu_s, self.mem_mb, self.timeout_s)
            out.append(float(rc == 0 and stdout.strip() == str(expected).strip()))
        return out
