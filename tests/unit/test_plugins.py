"""rltune.plugins: entry points, dotted and file paths; errors that name the spec and the fix."""

from __future__ import annotations

import functools
import sys
import textwrap

import pytest

from rltune.plugins import PluginError, bind_args, build, installed, resolve
from rltune_rewards.exact_match import ExactMatch
from rltune_rewards.length import LengthPenalty

SHIPPED = {
    "exact_match": "rltune_rewards.exact_match:ExactMatch",
    "math_accuracy": "rltune_rewards.math_accuracy:MathAccuracy",
    "format": "rltune_rewards.format:FormatReward",
    "length_penalty": "rltune_rewards.length:LengthPenalty",
}


@pytest.fixture
def plugin_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(textwrap.dedent("""
        LOADS = []
        LOADS.append(1)

        class Scaled:
            def __init__(self, scale, bias=0.0):
                self.scale, self.bias = scale, bias
            def __call__(self, inp):
                return [self.scale] * len(inp)

        def trl_reward(prompts, completions, threshold=0.5, **kwargs):
            return [threshold] * len(completions)
    """))
    return path


def test_installed_lists_shipped_rewards():
    got = installed("rewards")
    assert {k: got[k] for k in SHIPPED} == SHIPPED
    assert installed("no_such_group") == {}


@pytest.mark.parametrize(
    "spec",
    ["exact_match", "rltune_rewards.exact_match:ExactMatch", "rltune_rewards.exact_match.ExactMatch"],
)
def test_resolve_entry_point_and_dotted(spec):
    assert resolve(spec, "rewards") is ExactMatch


def test_resolve_nested_attribute():
    assert resolve("rltune.plugins:PluginError.__init__", "rewards") is PluginError.__init__


def test_file_path_relative_to_base_dir_then_cwd(plugin_file, tmp_path, monkeypatch):
    cls = resolve("my_rewards.py:Scaled", "rewards", base_dir=tmp_path)
    assert cls.__name__ == "Scaled"
    # the same file loads once per process: same class object, module body ran once
    monkeypatch.chdir(tmp_path)
    again = resolve(f"{plugin_file}:Scaled", "rewards")
    assert again is cls and sys.modules[cls.__module__].LOADS == [1]
    assert resolve("./my_rewards.py:Scaled", "rewards") is cls


def test_file_path_errors(plugin_file, tmp_path):
    with pytest.raises(PluginError, match=r"file 'nope\.py' not found \(tried: .*nope\.py"):
        resolve("nope.py:X", "rewards", base_dir=tmp_path)
    with pytest.raises(PluginError, match=r"has no attribute 'Scaledd'; did you mean 'Scaled'"):
        resolve("my_rewards.py:Scaledd", "rewards", base_dir=tmp_path)
    with pytest.raises(PluginError, match=r"no attribute; write 'my_rewards\.py:<Attr>' .*Scaled, trl_reward"):
        resolve("my_rewards.py", "rewards", base_dir=tmp_path)
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(PluginError, match=r"executing .*broken\.py' failed: RuntimeError: boom"):
        resolve("broken.py:X", "rewards", base_dir=tmp_path)


def test_unknown_name_lists_installed_and_suggests_nearest():
    with pytest.raises(PluginError) as e:
        resolve("exact_mach", "rewards")
    msg = str(e.value)
    assert "unknown rewards plugin 'exact_mach'" in msg and "rltune.rewards" in msg
    listed = msg.split("(installed: ", 1)[1].split(")", 1)[0].split(", ")
    assert listed == sorted(listed) and {"code_exec", "exact_match", "format", "length_penalty",
                                         "math_accuracy"} <= set(listed)
    assert "did you mean 'exact_match'?" in msg
    assert "pkg.mod:Attr" in msg and "file.py:Attr" in msg


@pytest.mark.parametrize(
    "spec, pattern",
    [
        ("no_such_pkg.mod:X", r"no module named 'no_such_pkg'"),
        ("rltune_rewards.exact_match:Nope", r"module 'rltune_rewards.exact_match' has no attribute 'Nope'"),
        ("rltune_rewards.exact_match:ExactMach", r"did you mean 'ExactMatch'"),
        ("", r"empty rewards plugin spec"),
    ],
)
def test_dotted_errors(spec, pattern):
    with pytest.raises(PluginError, match=pattern):
        resolve(spec, "rewards")


def test_module_beside_the_recipe_is_importable(tmp_path, monkeypatch):
    (tmp_path / "lab_mods_xyz.py").write_text("def f(inp):\n    return [1.0] * len(inp)\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert resolve("lab_mods_xyz:f", "rewards", base_dir=tmp_path).__name__ == "f"


def test_missing_dependency_inside_a_module_is_not_reported_as_missing_module(tmp_path, monkeypatch):
    (tmp_path / "needs_dep_xyz.py").write_text("import not_installed_dep_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"'needs_dep_xyz' was found but importing it failed.*not_installed_dep"):
        resolve("needs_dep_xyz:X", "rewards")


@pytest.mark.parametrize(
    "args, pattern",
    [
        ({"max_len": 10}, r"missing required argument 'cache_len' \(valid arguments: max_len, cache_len, factor"),
        ({"max_len": 10, "cache_len": 2, "max_lenght": 3},
         r"unexpected argument 'max_lenght' \(valid arguments: max_len, cache_len, factor\); did you mean 'max_len'"),
    ],
)
def test_bind_args_names_bad_argument_and_valid_ones(args, pattern):
    with pytest.raises(PluginError, match=pattern) as e:
        bind_args(LengthPenalty, args, "length_penalty")
    assert "plugin 'length_penalty'" in str(e.value)


def test_bind_args_ok_and_functions_bind_partially():
    bind_args(LengthPenalty, {"max_len": 10, "cache_len": 2}, "length_penalty")

    def trl(prompts, completions, threshold=0.5, **kwargs):
        return []

    bind_args(trl, {"threshold": 0.1, "anything": 1}, "trl")  # **kwargs takes any name

    def strict(prompts, completions, threshold=0.5):
        return []

    with pytest.raises(PluginError, match=r"unexpected argument 'treshold'.*did you mean 'threshold'"):
        bind_args(strict, {"treshold": 0.1}, "strict")


def test_build_class_function_and_errors(plugin_file, tmp_path):
    obj = build("length_penalty", "rewards", {"max_len": 10, "cache_len": 2})
    assert isinstance(obj, LengthPenalty) and obj.max_len == 10
    fn = build("my_rewards.py:trl_reward", "rewards", {"threshold": 0.25}, base_dir=tmp_path)
    assert isinstance(fn, functools.partial) and fn(["p"], ["c"]) == [0.25]
    plain = build("my_rewards.py:trl_reward", "rewards", {}, base_dir=tmp_path)
    assert not isinstance(plain, functools.partial)
    with pytest.raises(PluginError, match=r"missing required argument 'scale'"):
        build("my_rewards.py:Scaled", "rewards", {}, base_dir=tmp_path)
    with pytest.raises(PluginError, match=r"building rewards plugin 'length_penalty'.*ValueError: .*cache_len"):
        build("length_penalty", "rewards", {"max_len": 2, "cache_len": 5})
    with pytest.raises(PluginError, match=r"is a list instance, not a class or function"):
        build("my_rewards.py:LOADS", "rewards", {"x": 1}, base_dir=tmp_path)
