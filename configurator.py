"""
nanoGPT-style configuration: a script keeps its defaults as module globals, and

    python train.py config/quickstart.py --max_iters=200 --learning_rate=3e-4 --compile=true

applies the config file (plain Python assignments), then each --key=value, in order. Unlike a bare
exec, every assignment is checked: the key must exist (an unknown key names its closest match) and the
value must have the default's type (an int is fine where a float is expected; a default of None takes
any value; bools are true/false). A config file may start from another with include("other.py") (a path
relative to the including file), then change what differs: each published setting has one home.
"""
import ast
import difflib
import os
import traceback
import types

TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class ConfigError(Exception):
    """A bad config file or override; the message names the key or file."""


def _suggest(key, known):
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def coerce(key, value, default, source):
    """Check value against the type of default; return the value to assign."""
    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in TRUE + FALSE:
            return value.lower() in TRUE
        raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 1e6 written for an int
            return int(value)
        raise ConfigError(f"{source}: {key} must be an int, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
    if isinstance(default, (tuple, list)):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (tuple, list)):
            return type(default)(value)
        raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
    if not isinstance(value, type(default)):
        raise ConfigError(f"{source}: {key} must be {type(default).__name__}, got {value!r}")
    return value


def parse_value(text, default):
    """The text of --key=value as a Python value. Strings stay raw where a string is expected."""
    if isinstance(default, str):
        return text
    if text == "None":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def configurable(namespace):
    """The keys a config may set: public, non-module, non-callable globals."""
    return {k: v for k, v in namespace.items() if not k.startswith("_") and not isinstance(v, types.ModuleType)
            and not callable(v)}


def _read_source(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {e.start}); a config file is Python source")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})")


def _run_config(path, scope, including=()):
    """Execute config file `path` in scope, with include() running other files into the same scope."""
    if os.path.realpath(path) in including:
        raise ConfigError(f"{path}: included again by itself ({' -> '.join(map(os.path.basename, including))})")
    source = _read_source(path)

    def include(other):
        this_file = scope["__file__"], scope["include"]
        try:
            _run_config(os.path.join(os.path.dirname(path), other), scope, (*including, os.path.realpath(path)))
        finally:
            scope["__file__"], scope["include"] = this_file  # back to this file's own

    scope.update(__file__=path, include=include)
    try:
        exec(compile(source, path, "exec"), scope)
    except ConfigError:
        raise  # from an included file: it names its own file and line
    except Exception as e:
        raise ConfigError(f"{path}{_line_of(e, path)}: error in config file: {type(e).__name__}: {e}")


def apply_config_file(path, namespace, known):
    scope = {}
    _run_config(path, scope)
    applied = {}
    for key, value in scope.items():
        if key.startswith("_") or isinstance(value, types.ModuleType) or callable(value):
            continue
        if key not in known:
            raise ConfigError(f"{path}: unknown config key {key!r}{_suggest(key, known)}")
        namespace[key] = applied[key] = coerce(key, value, known[key], path)
    return applied


def _line_of(error, path):
    """':LINE' of the config file where error arose: a syntax error's own line, else the deepest
    traceback frame in that file."""
    if isinstance(error, SyntaxError) and error.lineno:
        return f":{error.lineno}"
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename == path]
    return f":{lines[-1]}" if lines else ""


def configure(namespace, argv):
    """Apply config files and --key=value overrides from argv to namespace (a module's globals()).
    Returns the dict of keys that were set, in order."""
    known = configurable(namespace)
    applied = {}
    for arg in argv:
        if not arg.startswith("--"):
            applied.update(apply_config_file(arg, namespace, known))
            continue
        key, eq, text = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in known:
            raise ConfigError(f"unknown config key {key!r}{_suggest(key, known)}")
        if not eq:
            if not isinstance(known[key], bool):
                raise ConfigError(f"--{key} needs a value: --{key}=VALUE")
            text = "true"
        value = coerce(key, parse_value(text, known[key]), namespace[key] if namespace[key] is not None else known[key], f"--{key}")
        namespace[key] = applied[key] = value
    return applied


def describe(namespace):
    """Lines 'key = default' of every configurable key, for --help."""
    return [f"  {k} = {v!r}" for k, v in configurable(namespace).items()]
