"""The guess-the-number environment, its task rows and expert transcripts."""

import random

import pytest

from rltune.envs.guess_number import GuessNumber, expert_transcript, guess_number_rows


@pytest.mark.parametrize("action, expected", [
    ("8", (" higher;", 0.0, False)),
    ("14", (" lower;", 0.0, False)),
    (" 11 ", ("", 1.0, True)),
    ("my guess: 11!", ("", 1.0, True)),
    ("zero", (" invalid;", 0.0, False)),
    ("17", (" invalid;", 0.0, False)),     # out of range
    ("", (" invalid;", 0.0, False)),
])
def test_step(action, expected):
    env = GuessNumber(1, 16)
    assert env.reset({"secret": 11, "prompt": "guess 1-16:"}) == ""
    assert env.step(action)[:3] == expected


def test_reset_rejects_a_secret_outside_the_range_and_step_needs_reset():
    with pytest.raises(ValueError, match="outside"):
        GuessNumber(1, 8).reset({"secret": 9})
    with pytest.raises(RuntimeError, match="before reset"):
        GuessNumber().step("3")


def _replay(solution: str, secret: int, low: int, high: int) -> tuple[int, float]:
    """Feed the transcript's model turns to the env; the observations must match the transcript's."""
    env = GuessNumber(low, high)
    env.reset({"secret": secret})
    turns = solution.split("<eos>")
    reward = 0.0
    for k, turn in enumerate(turns):
        action = turn if k == 0 else turn.split(";", 1)[1]
        obs, reward, done, _ = env.step(action)
        if k + 1 < len(turns):
            assert turns[k + 1].startswith(obs) and not done
    return len(turns), reward


@pytest.mark.parametrize("expert", ["binary", "random"])
def test_expert_transcripts_are_consistent_with_the_env(expert):
    rng = random.Random(0)
    wins = 0
    for secret in range(1, 17):
        for _ in range(5):
            sol = expert_transcript(secret, 1, 16, 4, rng, expert)
            turns, reward = _replay(sol, secret, 1, 16)
            assert turns <= 4
            wins += reward
    if expert == "binary":
        assert wins == 15 * 5  # binary search finds 15 of 16 secrets within 4 guesses
    else:
        assert 0.4 < wins / 80 < 0.75  # ~57% expected


def test_binary_transcript_exact():
    want = "8<eos> higher;12<eos> lower;10<eos> higher;11"
    assert expert_transcript(11, 1, 16, 4, random.Random(0), "binary") == want


def test_rows():
    test = guess_number_rows("test", low=1, high=8)
    assert [r["secret"] for r in test] == list(range(1, 9))
    assert test[0]["prompt"] == "guess 1-8:" and test[3]["answer"] == "4"
    train = guess_number_rows("train", n_train=50, train_seed=3)
    assert len(train) == 50 and train == guess_number_rows("train", n_train=50, train_seed=3)
    assert {r["secret"] for r in train} <= set(range(1, 17))
