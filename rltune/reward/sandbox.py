"""Running untrusted programs (model-written code) for rewards: bubblewrap, a SandboxFusion-style HTTP service,
or (only when a recipe says `unsafe_local: true`) a plain local subprocess.

bubblewrap (https://github.com/containers/bubblewrap) gives each program fresh user, PID, network, mount, IPC and
UTS namespaces: it sees a read-only /usr (and the interpreter's prefix), a private tmpfs /tmp, a /proc of its own
PID namespace only, no network, an empty environment, and rlimits (CPU, memory, file size, open files, processes)
applied inside the namespaces by `prlimit`. When the program ends (or times out) its process group is killed,
and the PID namespace dies with its pid 1, so nothing it forked survives the call. When rltune runs as root the
sandbox runs as `nobody`: RLIMIT_NPROC is not enforced for root.

The HTTP backend speaks SandboxFusion's `POST /run_code` (https://github.com/bytedance/SandboxFusion): a cluster
can run the service on separate machines so that model code never runs next to the trainer.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rltune.reward.adapters import RewardError

NOBODY = 65534


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 2
    mem_mb: int = 512
    timeout_s: float = 5.0
    max_procs: int = 16
    max_output_kb: int = 1024


@dataclass(frozen=True)
class RunResult:
    returncode: int | None  # None: killed at the wall-clock timeout
    stdout: str


def _world_traversable(path: str) -> bool:
    p = Path(path).resolve()
    return all(os.stat(d).st_mode & 0o001 for d in [*reversed(p.parents)]) and bool(os.stat(p).st_mode & 0o005)


def _python_for(as_nobody: bool) -> str:
    """This interpreter when the sandbox user can read it, else the system one (stdlib only either way)."""
    own = os.path.realpath(sys.executable)
    if not as_nobody or _world_traversable(own):
        return own
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(cand) and _world_traversable(cand):
            return os.path.realpath(cand)
    raise RewardError(f"code sandbox: {own} is not readable by the sandbox user (uid {NOBODY}) and no "
                      "/usr/bin/python3 exists; install python3 from the system packages")


def _run_and_reap(cmd: list[str], limits: Limits, user: int | None, cwd: str) -> RunResult:
    """Run `cmd` in its own session with an empty environment; kill the whole process group at the end.
    stdout goes to a file so RLIMIT_FSIZE caps its size."""
    with tempfile.TemporaryFile() as out:
        kw = {"user": user, "group": user, "extra_groups": []} if user is not None else {}
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL, env={},
                             cwd=cwd, start_new_session=True, **kw)
        try:
            rc: int | None = p.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        out.seek(0)
        return RunResult(rc, out.read(limits.max_output_kb << 10).decode("utf-8", "replace"))


def _prlimit(limits: Limits) -> list[str]:
    return ["prlimit", f"--cpu={limits.cpu_s}", f"--as={limits.mem_mb << 20}", f"--nproc={limits.max_procs}",
            f"--fsize={limits.max_output_kb << 10}", "--nofile=64", "--core=0", "--"]


class BwrapSandbox:
    """Each run: `bwrap` with fresh namespaces around `prlimit ... python -I -S -c code` (see the module doc)."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.user = NOBODY if os.geteuid() == 0 else None
        self.python = _python_for(self.user is not None)

    def command(self, code: str) -> list[str]:
        binds = ["/usr", "/bin", "/lib", "/lib64", "/sbin", str(Path(self.python).parents[1])]
        cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
               "--hostname", "sandbox"]
        for b in dict.fromkeys(binds):
            if os.path.exists(b):
                cmd += ["--ro-bind", b, b]
        cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", "/tmp", "--clearenv", "--"]
        return cmd + _prlimit(self.limits) + [self.python, "-I", "-S", "-c", code]

    def run(self, code: str) -> RunResult:
        return _run_and_reap(self.command(code), self.limits, self.user, "/")


class LocalProcess:
    """unsafe_local: a plain subprocess with rlimits, an empty environment and its process group killed at the
    end, but the trainer's filesystem, network, user and process table. For trusted code only."""

    def __init__(self, limits: Limits):
        self.limits = limits

    def run(self, code: str) -> RunResult:
        with tempfile.TemporaryDirectory(prefix="rltune-unsafe-") as tmp:
            return _run_and_reap(_prlimit(self.limits) + [sys.executable, "-I", "-S", "-c", code], self.limits,
                                 None, tmp)


class HttpSandbox:
    """A SandboxFusion-compatible service: POST {url}/run_code {code, language, run_timeout, memory_limit_MB}."""

    def __init__(self, url: str, limits: Limits):
        self.url, self.limits = url.rstrip("/") + "/run_code", limits

    def run(self, code: str) -> RunResult:
        body = json.dumps({"code": code, "language": "python", "run_timeout": self.limits.timeout_s,
                           "memory_limit_MB": self.limits.mem_mb}).encode()
        req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.limits.timeout_s + 30) as resp:
                doc = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise RewardError(f"code sandbox service {self.url} failed: {e}. Check that it runs and that "
                              "rewards[].args.url points at it") from None
        if doc.get("status") == "SandboxError":
            raise RewardError(f"code sandbox service {self.url} reported an internal error: {doc.get('message')}")
        run = doc.get("run_result") or {}  # null when the program did not start (e.g. a compile error)
        if run.get("status") == "TimeLimitExceeded":
            return RunResult(None, run.get("stdout") or "")
        rc = run.get("return_code")
        return RunResult(-1 if rc is None else int(rc), run.get("stdout") or "")


@functools.lru_cache(maxsize=1)
def bwrap_problem() -> str | None:
    """None when bubblewrap works here, else why not (probed once with a trivial program)."""
    if shutil.which("bwrap") is None or shutil.which("prlimit") is None:
        return "`bwrap` (bubblewrap) or `prlimit` (util-linux) is not installed (apt-get install bubblewrap)"
    try:
        r = BwrapSandbox(Limits(timeout_s=30)).run("print(6*7)")
    except (RewardError, OSError) as e:
        return str(e)
    if r.returncode != 0 or r.stdout.strip() != "42":
        return ("bubblewrap is installed but cannot create its namespaces here (unprivileged user namespaces "
                "may be disabled: sysctl kernel.unprivileged_userns_clone=1, or run the container with "
                "--security-opt seccomp=unconfined)")
    return None


def make_sandbox(backend: str, url: str | None, unsafe_local: bool, limits: Limits):
    """The backend a recipe asked for, or RewardError naming the fix."""
    if backend == "http":
        if not url:
            raise RewardError("code sandbox: backend: http needs url: (a SandboxFusion-compatible service)")
        return HttpSandbox(url, limits)
    if backend == "local":
        if not unsafe_local:
            raise RewardError("code sandbox: backend: local runs model-written code unconfined; it needs "
                              "unsafe_local: true in the reward's args (see docs/rewards.md)")
        return LocalProcess(limits)
    if backend != "bwrap":
        raise RewardError(f"code sandbox: unknown backend {backend!r}; use bwrap, http or local")
    problem = bwrap_problem()
    if problem is None:
        return BwrapSandbox(limits)
    if unsafe_local:
        return LocalProcess(limits)
    raise RewardError(f"code sandbox: {problem}. Install bubblewrap, or point the reward at a sandbox service "
                      "(backend: http, url: ...), or accept running model code unconfined with "
                      "unsafe_local: true (see docs/rewards.md)")


def run_many(sandbox, programs: list[str], max_parallel: int) -> list[RunResult]:
    """Run the programs of a batch, up to `max_parallel` at a time; results in input order."""
    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(programs) or 1))) as pool:
        return list(pool.map(sandbox.run, programs))
