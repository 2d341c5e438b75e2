"""A modifier in its own package (examples/custom_modifier) is found by entry point and validated in a recipe.

Installs the example into the running venv (from a copy in tmp_path, so the build leaves nothing in the repo),
then checks from fresh processes what a user would run: `plugins.resolve("adv_clip", "modifiers")` and
`rltune validate`. The package is uninstalled afterwards unless it was installed before the test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "custom_modifier"
RLTUNE = Path(sys.executable).parent / "rltune"


def _run(*cmd: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    try:
        metadata.distribution("rltune-advclip")
        was_installed = True
    except metadata.PackageNotFoundError:
        was_installed = False
    src = tmp_path_factory.mktemp("advclip") / "custom_modifier"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    res = _run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", str(src),
               cwd=src)
    assert res.returncode == 0, res.stdout + res.stderr
    yield src
    if not was_installed:
        _run(sys.executable, "-m", "pip", "uninstall", "-y", "-q", "rltune-advclip", cwd=src)


def test_entry_point_resolves_in_a_fresh_process(installed_example, tmp_path) -> None:
    code = (
        "import torch\n"
        "from rltune import plugins\n"
        "from rltune.modifiers.pipeline import check_modifier_class\n"
        "cls = plugins.resolve('adv_clip', 'modifiers')\n"
        "check_modifier_class(cls, 'adv_clip')\n"
        "assert plugins.installed('modifiers')['adv_clip'] == 'rltune_advclip:AdvClip'\n"
        "m = plugins.build('adv_clip', 'modifiers', {'max_abs': 1.5})\n"
        "class C: response_mask = torch.ones(1, 3, dtype=torch.bool)\n"
        "a = torch.tensor([[3.0, -0.5, -2.0]])\n"
        "out = m.shape_advantages(a, C())\n"
        "assert out.tolist() == [[1.5, -0.5, -1.5]] and a.tolist() == [[3.0, -0.5, -2.0]]\n"
        "print(cls.__name__, m.on_step_end({}, None))\n"
    )
    res = _run(sys.executable, "-c", code, cwd=tmp_path)   # cwd outside the repo: found as an installed package
    assert res.returncode == 0, res.stdout + res.stderr
    assert "AdvClip" in res.stdout and "clipped_frac" in res.stdout


def test_rltune_validate_accepts_a_recipe_that_uses_it(installed_example, tmp_path) -> None:
    recipe = yaml.safe_load((ROOT / "recipes" / "addition-tiny.yaml").read_text())
    recipe["modifiers"] = [{"use": "adv_clip", "args": {"max_abs": 3.0}}]
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(recipe))
    res = _run(str(RLTUNE), "validate", str(good), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    # A misspelled argument is caught by the signature check, naming the valid one.
    recipe["modifiers"] = [{"use": "adv_clip", "args": {"max_abss": 3.0}}]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(recipe))
    res = _run(str(RLTUNE), "validate", str(bad), cwd=tmp_path)
    assert res.returncode != 0 and "max_abs" in res.stdout + res.stderr
