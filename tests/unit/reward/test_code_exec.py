import doctest
import time

import pytest

import rltune_rewards.code_exec as code_exec
from rltune.reward import RewardInput
from rltune_rewards.code_exec import CodeExec, run_sandboxed


def _inp(completions, answers):
    return RewardInput(prompts=[""] * len(completions), completions=completions,
                       completion_ids=[[]] * len(completions), meta={"answer": answers})


@pytest.mark.parametrize(
    "code, expected",
    [
        ("print(6*7)", 1.0),
        ("```python\nprint(sum(range(10)))\n```", 1.0),
        ("print(41)", 0.0),
        ("raise SystemExit(3)", 0.0),
        ("import socket; socket.socket(); print(42)", 0.0),           # no network
        ("x = bytearray(2 * 1024**3); print(42)", 0.0),                 # memory limit
    ],
)
def test_code_exec_scores(code, expected):
    answers = ["45"] if "range(10)" in code else ["42"]
    assert CodeExec(mem_mb=256)(_inp([code], answers)) == [expected]


def test_cpu_limit_and_timeout_are_enforced():
    t0 = time.time()
    rc, _ = run_sandboxed("while True: pass", cpu_s=1, timeout_s=5)
    assert rc != 0 and time.time() - t0 < 5
    rc, _ = run_sandboxed("import time; time.sleep(10)", timeout_s=0.5)
    assert rc == -1


def test_doctest():
    assert doctest.testmod(code_exec).failed == 0
