"""A trainer that behaves like a run which got SIGTERM during step `stop_at` (it finishes the step, then
checkpoints and returns, as the signal handler makes it)."""

from rltune.trainer import Trainer


class StopAfter(Trainer):
    def __init__(self, *a, stop_at: int, **kw):
        super().__init__(*a, **kw)
        self._stop_at = stop_at

    def train_step(self):
        out = super().train_step()
        if self.step + 1 == self._stop_at:
            self._stop_signal = "SIGTERM"
        return out
