"""docs/recipe-reference.md is generated from the schema; this fails when someone changes the schema and
forgets to regenerate it (or edits the file by hand)."""

import difflib

from rltune.config.reference import REGENERATE, generate_reference
from rltune.config.schema import AlgoConfig, DynamicSamplingConfig, LoraConfig, Recipe, TinyModelConfig
from tests.conftest import ROOT

DOC = ROOT / "docs" / "recipe-reference.md"


def test_committed_reference_is_current():
    want = generate_reference()
    have = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
    if have != want:
        diff = "".join(list(difflib.unified_diff(have.splitlines(True), want.splitlines(True), "committed",
                                                 "generated"))[:40])
        raise AssertionError(f"{DOC.relative_to(ROOT)} is stale; regenerate it with\n    {REGENERATE}\n{diff}")


def test_reference_covers_every_field_of_every_section():
    text = generate_reference()
    for heading in ("## run", "## model.tiny", "## model.lora", "## algo.dynamic_sampling", "## critic",
                    "## rewards[]", "## modifiers[]", "## logging.wandb", "## sft"):
        assert f"\n{heading}\n" in text, heading
    for model in (Recipe, AlgoConfig, TinyModelConfig, LoraConfig, DynamicSamplingConfig):
        for name in model.model_fields:
            assert f"| `{name}` |" in text, (model.__name__, name)
    assert "| `kl_coef` | float (≥ 0.0) | `0.0` | β of the KL" in text
    assert "| `source` | str | **required** |" in text
    assert "[`model.tiny`](#modeltiny)" in text  # critic.tiny links to the one description
