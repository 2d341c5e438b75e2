"""A modifier with a rank-side hook (extra_loss), state and metrics, for the training-rank tests."""

from rltune.modifiers.base import Modifier


class CountingLoss(Modifier):
    """Adds a zero loss term and counts the micro-batches it saw (its state); reports the count."""

    def __init__(self):
        self.calls = 0

    def extra_loss(self, ctx):
        self.calls += 1
        return {"zero": ctx.logprobs.sum() * 0.0}

    def on_step_end(self, metrics, state):
        return {"calls": float(self.calls)}

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, sd):
        self.calls = sd["calls"]
