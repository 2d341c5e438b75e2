"""The code_exec reward's sandbox: scores, limits, and each escape a model-written program might try.

The escapes are tried for real inside bubblewrap and must fail; the tests skip, saying why, where bubblewrap
cannot run (not installed, or user namespaces disabled). .ci/run installs it.
"""

import doctest
import http.server
import json
import os
import socket
import subprocess
import threading
import time
import uuid

import pytest

import rltune_rewards.code_exec as code_exec
from rltune.reward import RewardError, RewardInput
from rltune.reward.sandbox import BwrapSandbox, Limits, bwrap_problem, make_sandbox
from rltune_rewards.code_exec import CodeExec

needs_bwrap = pytest.mark.skipif(bwrap_problem() is not None, reason=f"no bubblewrap sandbox: {bwrap_problem()}")


def _inp(completions, answers):
    return RewardInput(prompts=[""] * len(completions), completions=completions,
                       completion_ids=[[]] * len(completions), meta={"answer": answers})


@needs_bwrap
@pytest.mark.parametrize(
    "code, expected",
    [
        ("print(6*7)", 1.0),
        ("```python\nprint(sum(range(10)))\n```", 1.0),
        ("print(41)", 0.0),
        ("raise SystemExit(3)", 0.0),
        ("x = bytearray(2 * 1024**3); print(42)", 0.0),                 # memory limit
    ],
)
def test_code_exec_scores(code, expected):
    answers = ["45"] if "range(10)" in code else ["42"]
    assert CodeExec(mem_mb=256)(_inp([code], answers)) == [expected]


@needs_bwrap
def test_cpu_limit_and_timeout_are_enforced():
    t0 = time.time()
    assert BwrapSandbox(Limits(cpu_s=1, timeout_s=5)).run("while True: pass").returncode not in (0, None)
    assert time.time() - t0 < 5
    assert BwrapSandbox(Limits(timeout_s=0.5)).run("import time; time.sleep(10)").returncode is None


@needs_bwrap
def test_programs_of_a_batch_run_in_parallel():
    r = CodeExec(max_parallel=4)
    t0 = time.time()
    assert r(_inp(["import time; time.sleep(1); print(1)"] * 4, ["1"] * 4)) == [1.0] * 4
    assert time.time() - t0 < 3.2  # one after another would take 4 s


# ----------------------------------------------------------------------------------------------- escapes
def _run(code: str, **limits) -> tuple[int | None, str]:
    r = BwrapSandbox(Limits(**limits)).run(code)
    return r.returncode, r.stdout


@needs_bwrap
def test_cannot_kill_the_parent_or_other_processes():
    victim = subprocess.Popen(["sleep", "60"])
    try:
        rc, out = _run("import os, signal\n"
                       "for pid in (os.getppid(), %d, %d):\n"
                       "    try:\n        os.kill(pid, signal.SIGKILL); print('killed', pid)\n"
                       "    except OSError as e:\n        print('denied', pid, type(e).__name__)\n"
                       % (victim.pid, os.getpid()))
        time.sleep(0.2)
        assert victim.poll() is None, out  # the host process it aimed at still runs
        assert f"killed {victim.pid}" not in out and f"killed {os.getpid()}" not in out
    finally:
        victim.kill()
        victim.wait()


@needs_bwrap
def test_cannot_read_the_trainers_environment(monkeypatch):
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    monkeypatch.setenv("RLTUNE_FAKE_SECRET", secret)
    rc, out = _run("import os\n"
                   "print(dict(os.environ))\n"
                   "for pid in {os.getppid(), 1, %d}:\n"
                   "    try:\n        print(open(f'/proc/{pid}/environ').read())\n"
                   "    except OSError as e:\n        print('denied', pid, e)\n"
                   "print(sorted(p for p in os.listdir('/proc') if p.isdigit()))\n" % os.getpid())
    assert rc == 0, out
    assert secret not in out
    assert "HOME" not in out and "PATH" not in out  # an empty environment


@needs_bwrap
def test_no_network_even_through_the_raw_socket_module():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        rc, out = _run("import _socket\n"
                       "for host in ('127.0.0.1', '1.1.1.1'):\n"
                       "    s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\n"
                       "    s.settimeout(1)\n"
                       "    try:\n"
                       "        s.connect((host, %d if host.startswith('127') else 80)); print('OPEN', host)\n"
                       "    except OSError as e:\n        print('BLOCKED', host, e)\n" % port)
        assert "OPEN" not in out and out.count("BLOCKED") == 2, out
        with pytest.raises(socket.timeout):
            server.accept()  # nothing reached the host's listener
    finally:
        server.close()


@needs_bwrap
def test_cannot_write_outside_its_private_tmp(tmp_path):
    from tests.conftest import ROOT

    targets = [tmp_path / "escaped", ROOT / f"escaped-{uuid.uuid4().hex}", "/usr/escaped"]
    rc, out = _run("import os\n"
                   "for p in %r:\n"
                   "    try:\n        os.makedirs(os.path.dirname(p), exist_ok=True); open(p, 'w').write('x')\n"
                   "    except OSError as e:\n        print('denied', p, e.strerror)\n"
                   "open('/tmp/scratch', 'w').write('ok'); print(open('/tmp/scratch').read())\n"
                   % [str(t) for t in targets])
    assert rc == 0 and out.strip().endswith("ok"), out  # its own /tmp works
    for t in targets:
        assert not os.path.exists(t), f"{t} was written from inside the sandbox"


def _processes_with(token: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if token.encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


@needs_bwrap
def test_no_process_outlives_the_call():
    token = f"{int(time.time() * 1000) % 10**9}"
    rc, out = _run("import subprocess, os\n"
                   "subprocess.Popen(['sleep', '300.%s'], start_new_session=True)\n"
                   "if os.fork() == 0:\n    os.setsid(); os.execvp('sleep', ['sleep', '301.%s'])\n"
                   "print('left children behind')\n" % (token, token))
    assert "left children behind" in out
    time.sleep(0.3)
    assert _processes_with(f".{token}") == []


@needs_bwrap
def test_the_process_limit_holds():
    rc, out = _run("import os, time\n"
                   "n = 0\n"
                   "try:\n    for _ in range(100):\n"
                   "        if os.fork() == 0:\n            time.sleep(3); os._exit(0)\n"
                   "        n += 1\n"
                   "except OSError:\n    pass\n"
                   "print(n)\n", timeout_s=4, max_procs=8)
    assert rc == 0 and 0 < int(out) < 8, out  # the program itself counts against max_procs


@needs_bwrap
def test_a_fork_bomb_is_contained():
    t0 = time.time()
    token = f"{int(time.time() * 1000) % 10**9}"
    rc, out = _run("import os\n"
                   "n = 0\n"
                   "try:\n    while True:\n        os.fork(); n += 1\n"
                   "except OSError:\n    pass\n"
                   "import time; time.sleep(30) # %s\n" % token, timeout_s=3, max_procs=16)
    assert rc is None and time.time() - t0 < 10
    time.sleep(0.3)
    assert _processes_with(token) == []
    assert subprocess.run(["true"]).returncode == 0  # the host can still start processes


# ----------------------------------------------------------------------------------------- other backends
class _FakeFusion(http.server.BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        code = body["code"]
        if "sleep" in code:
            run = {"status": "TimeLimitExceeded", "return_code": None, "stdout": ""}
        else:
            run = {"status": "Finished", "return_code": 0 if "print" in code else 1,
                   "stdout": "42\n" if "42" in code else ""}
        data = json.dumps({"status": "Success", "compile_result": None, "run_result": run}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


def test_http_backend_speaks_sandboxfusions_run_code():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeFusion)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = CodeExec(backend="http", url=f"http://127.0.0.1:{server.server_address[1]}/", timeout_s=3, mem_mb=256)
        assert r(_inp(["print(42)", "print(41)", "import time; time.sleep(9)", "x = 1"], ["42"] * 4)) == \
            [1.0, 0.0, 0.0, 0.0]
        path, body = _FakeFusion.requests[0]
        assert path == "/run_code"
        assert body["language"] == "python" and body["run_timeout"] == 3 and body["memory_limit_MB"] == 256
    finally:
        server.shutdown()
    with pytest.raises(RewardError, match="code sandbox service .* failed"):
        r(_inp(["print(42)"], ["42"]))  # the service is gone: an error naming it, not silent zeros


def test_unconfined_execution_needs_unsafe_local(monkeypatch):
    with pytest.raises(RewardError, match="unsafe_local: true"):
        make_sandbox("local", None, False, Limits())
    with pytest.raises(RewardError, match="needs url"):
        make_sandbox("http", None, False, Limits())
    # without bubblewrap the default backend refuses, naming the three ways out
    import rltune.reward.sandbox as sandbox

    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "`bwrap` (bubblewrap) ... is not installed")
    with pytest.raises(RewardError, match="Install bubblewrap.*backend: http.*unsafe_local: true"):
        CodeExec()
    assert CodeExec(unsafe_local=True)(_inp(["print(42)"], ["42"])) == [1.0]


def test_doctest():
    assert doctest.testmod(code_exec).failed == 0
