"""`rltune report` renders the curves of real runs; `init` writes a recipe that validates; `doctor` runs."""

import shutil
import subprocess
import sys

import pytest

from rltune.report import build_report
from rltune.trainer import Trainer
from tests.conftest import ROOT


@pytest.fixture
def two_runs(tiny_recipe, tmp_path):
    dirs = []
    for seed in (0, 1):
        r = tiny_recipe(run={"steps": 3, "seed": seed, "output_dir": str(tmp_path / f"run{seed}"),
                             "eval_interval": 1})
        Trainer(r).fit()
        dirs.append(tmp_path / f"run{seed}")
    return dirs


def _png_has_content(path):
    from PIL import Image

    img = Image.open(path).convert("L")
    lo, hi = img.getextrema()
    return img.size[0] > 100 and hi - lo > 50


def test_report_has_nonempty_plots_and_samples(two_runs, tmp_path):
    index = build_report(two_runs, tmp_path / "rep")
    page = index.read_text()
    pngs = sorted((tmp_path / "rep").glob("fig*.png"))
    assert len(pngs) >= 6
    assert all(_png_has_content(p) for p in pngs)
    assert page.count("data:image/png;base64,") == len(pngs)
    for needle in ("Held-out accuracy", "Time per phase", "run0", "run1", "resolved recipe", "best and worst"):
        assert needle in page, needle


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(two_runs, tmp_path):
    index = build_report(two_runs[:1], tmp_path / "rep")
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600",
                    f"--screenshot={shot}", index.as_uri()], check=True, timeout=120, capture_output=True)
    assert _png_has_content(shot)


def test_init_writes_a_valid_recipe(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rltune.cli", "init", str(tmp_path / "r.yaml")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    v = subprocess.run([sys.executable, "-m", "rltune.cli", "validate", str(tmp_path / "r.yaml")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 0 and "ok" in v.stdout


def test_doctor_reports_versions():
    r = subprocess.run([sys.executable, "-m", "rltune.cli", "doctor", "--no-ray"], cwd=ROOT, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    for pkg in ("torch", "transformers", "trl", "devices"):
        assert pkg in r.stdout
