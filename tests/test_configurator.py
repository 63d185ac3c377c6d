"""configurator.py: config files and --key=value overrides, type-checked."""
import pytest

from configurator import ConfigError, configure


def defaults():
    return {"learning_rate": 6e-4, "max_iters": 1000, "compile": False, "out_dir": "out", "init_from": "scratch",
            "lora_targets": ("q", "v"), "max_tokens": None}


def test_overrides_are_typed_and_applied_in_order(tmp_path):
    cfg = tmp_path / "c.py"
    cfg.write_text("import math\nmax_iters = 10\nlearning_rate = 1e-3 * math.sqrt(4)\n_private = 3\n")
    ns = defaults()
    applied = configure(ns, [str(cfg), "--max_iters=20", "--compile=true", "--out_dir=runs/1e3", "--lora_targets=q,k,v"])
    assert ns["max_iters"] == 20 and isinstance(ns["max_iters"], int)
    assert ns["learning_rate"] == pytest.approx(2e-3)
    assert ns["compile"] is True
    assert ns["out_dir"] == "runs/1e3"  # a string stays a string, even when it looks like a number
    assert ns["lora_targets"] == ("q", "k", "v")
    assert list(applied) == ["max_iters", "learning_rate", "compile", "out_dir", "lora_targets"]


def test_int_for_float_and_none_defaults():
    ns = defaults()
    configure(ns, ["--learning_rate=1", "--max_tokens=5000000", "--max_iters=1e3"])
    assert ns["learning_rate"] == 1.0 and isinstance(ns["learning_rate"], float)
    assert ns["max_tokens"] == 5_000_000
    assert ns["max_iters"] == 1000 and isinstance(ns["max_iters"], int)
    configure(ns, ["--compile=False", "--compile"])
    assert ns["compile"] is True


@pytest.mark.parametrize("arg, message", [
    ("--max_itres=5", "unknown config key 'max_itres' (did you mean 'max_iters'?)"),
    ("--max_iters=abc", "max_iters must be an int, got 'abc'"),
    ("--max_iters=1.5", "max_iters must be an int"),
    ("--learning_rate=fast", "learning_rate must be a number"),
    ("--compile=maybe", "compile must be true or false"),
    ("--max_iters", "--max_iters needs a value"),
    ("--max_iters=None", "max_iters must be an int, got None"),
])
def test_bad_overrides_name_the_key(arg, message):
    with pytest.raises(ConfigError) as e:
        configure(defaults(), [arg])
    assert message in str(e.value)


def test_bad_config_files(tmp_path):
    unknown = tmp_path / "unknown.py"
    unknown.write_text("learning_rat = 1e-3\n")
    with pytest.raises(ConfigError, match=r"unknown.py: unknown config key 'learning_rat' \(did you mean 'learning_rate'\?\)"):
        configure(defaults(), [str(unknown)])
    typo = tmp_path / "typo.py"
    typo.write_text("max_iters = 10\nmax_iters = = 3\n")
    with pytest.raises(ConfigError, match=r"typo.py:2: error in config file"):
        configure(defaults(), [str(typo)])
    wrong = tmp_path / "wrong.py"
    wrong.write_text("compile = 'yes please'\n")
    with pytest.raises(ConfigError, match="compile must be true or false"):
        configure(defaults(), [str(wrong)])
    with pytest.raises(ConfigError, match="cannot read config file"):
        configure(defaults(), [str(tmp_path / "missing.py")])


def test_a_config_includes_another_and_changes_what_differs(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "base.py").write_text("max_iters = 10\nlearning_rate = 3e-4\nout_dir = 'out/base'\n")
    (tmp_path / "recipes" / "arm.py").write_text("include('base.py')  # relative to this file\nout_dir = 'out/arm'\n")
    (tmp_path / "two.py").write_text("include('recipes/arm.py')\nmax_iters = max_iters * 2\n"
                                     "include('recipes/base.py')\nlearning_rate = 1e-3\n")
    ns = defaults()
    configure(ns, [str(tmp_path / "recipes" / "arm.py")])
    assert (ns["max_iters"], ns["learning_rate"], ns["out_dir"]) == (10, 3e-4, "out/arm")
    ns = defaults()
    configure(ns, [str(tmp_path / "two.py")])  # the second include resolves from two.py again, not arm.py
    assert (ns["max_iters"], ns["learning_rate"], ns["out_dir"]) == (10, 1e-3, "out/base")


def test_include_errors_name_the_file(tmp_path):
    (tmp_path / "a.py").write_text("include('b.py')\n")
    (tmp_path / "b.py").write_text("include('a.py')\n")
    (tmp_path / "c.py").write_text("include('missing.py')\n")
    (tmp_path / "d.py").write_text("max_iters = 1\nmax_iters = 1 / 0\n")
    (tmp_path / "e.py").write_text("include('d.py')\n")
    for name, message in (("a.py", "a.py: included again by itself (a.py -> b.py)"),
                          ("c.py", "missing.py: cannot read config file"), ("e.py", "d.py:2: error in config file: ZeroDivisionError")):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            configure(defaults(), [str(tmp_path / name)])
