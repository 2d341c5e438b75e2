"""builtin:chain (rltune/data/chain.py): worked running sums, disjoint train/test, the registry entry."""

from __future__ import annotations

import pytest

from rltune.data.chain import chain_rows, chain_solution
from rltune.data.tasks import TASKS


def test_solution_is_the_running_sums():
    assert chain_solution([12, 34, 56]) == "46,102"
    assert chain_solution([5, 0, 7, 90]) == "5,12,102"


def test_rows_and_splits():
    test = chain_rows("test", terms=3, digits=2, n_test=50)
    train = chain_rows("train", terms=3, digits=2, n_train=400, n_test=50)
    assert len(test) == 50 and len(train) == 400
    assert len({r["prompt"] for r in test}) == 50                         # distinct held-out problems
    assert not {r["prompt"] for r in test} & {r["prompt"] for r in train}  # never trained on
    for r in test + train:
        xs = [int(x) for x in r["prompt"].rstrip("=").split("+")]
        assert len(xs) == 3 and all(0 <= x <= 99 for x in xs)
        assert r["answer"] == str(sum(xs)) and r["solution"].split(",")[-1] == r["answer"]
        assert r["solution"].split(",")[0] == str(xs[0] + xs[1])
    assert chain_rows("test", n_test=50) == test                          # deterministic
    assert TASKS["chain"] is chain_rows


@pytest.mark.parametrize("kw, msg", [({"terms": 1}, "terms >= 2"), ({"digits": 1, "terms": 2, "n_test": 60},
                                                                     "too many distinct problems")])
def test_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        chain_rows("test", **kw)
