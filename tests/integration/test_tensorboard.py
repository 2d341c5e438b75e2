"""`logging.tensorboard: true`: TensorBoard's own event files hold the same namespaced scalars as metrics.jsonl
(read back with TensorBoard's EventAccumulator, as the TensorBoard UI reads them)."""

import numpy as np
import pytest

from rltune.config.load import recipe_from_dict
from rltune.logging import read_metrics
from rltune.trainer import Trainer
from tests.conftest import TINY, merge

pytest.importorskip("tensorboard")


def test_tensorboard_scalars_equal_metrics_jsonl(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = recipe_from_dict(merge(TINY, {"run": {"output_dir": str(tmp_path / "run"), "steps": 3, "eval_interval": 2},
                                      "logging": {"tensorboard": True}}))
    t = Trainer(r)
    t.fit()
    want: dict[str, list[tuple[int, float]]] = {}
    for rec in read_metrics(t.run_dir):
        for k, v in rec.items():
            if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                want.setdefault(k, []).append((rec["step"], v))
    ea = EventAccumulator(str(t.run_dir / "tensorboard"), size_guidance={"scalars": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert tags == set(want)
    assert {"reward/mean", "loss/total", "eval/accuracy", "time/step"} <= tags  # namespaced as in the jsonl
    for tag, rows in want.items():
        got = [(e.step, e.value) for e in ea.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in rows], tag
        np.testing.assert_allclose([v for _, v in got], np.float32([v for _, v in rows]), rtol=1e-6, err_msg=tag)
    assert [s for s, _ in want["eval/accuracy"]] == [0, 2, 3]
