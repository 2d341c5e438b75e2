"""Rewards used by tests: dense enough that a random-init model gets a non-zero gradient."""


def char_code(completions, **kwargs):
    """TRL style: mean character code of the completion scaled to [0,1] (varies across any two samples)."""
    return [sum(map(ord, c)) / (127 * len(c)) if c else 0.0 for c in completions]


def starts_with_answer_digit(inp):
    """rltune style: 1.0 when the first character equals the answer's first digit."""
    return [float(bool(c) and c[0] == a[0]) for c, a in zip(inp.completions, inp.meta["answer"])]
