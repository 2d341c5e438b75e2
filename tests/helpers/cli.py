"""Run the rltune CLI in the test process (typer's runner): a subprocess per call costs seconds of imports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args) -> CliResult:
    """A raw exception fails the calling test (catch_exceptions=False): exit 2 means the CLI itself caught and
    explained the problem."""
    from typer.testing import CliRunner

    from rltune.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return CliResult(res.exit_code, res.stdout, res.stderr)
