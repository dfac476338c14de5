"""The settings layer every command shares: flags, RELAY_* variables and a JSON file, read into
the component's own typed config (ControlConfig, RelayConfig, RelayLaunch: pydantic dataclasses)
and validated there, so that a wrong value is one line naming the setting, where it came from
and the form it must have, never a traceback.

    surface = Surface((ControlConfig,), env={"port": "RELAY_CONTROL_PORT"})
    merged = merge([file_layer(surface, path), env_layer(surface, os.environ), flag_layer(surface, given)])
    config = validate(ControlConfig, merged)          # SettingsError: one line, exit code 2

Why pydantic dataclasses rather than pydantic-settings' BaseSettings: the configs stay
dataclasses (the embedding API, the load generator and the tests build them and
`dataclasses.replace` them), and each value keeps where it came from, which the error names.
The help of every flag and the settings tables of docs/operations.md are written from the same
fields (`help_text`, `markdown_table`), so they cannot disagree with the code.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import errno
import importlib
import json
import os
import shlex
import sys
import types
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, TypeVar, Union, get_args, get_origin

import annotated_types
from pydantic import BeforeValidator, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

T = TypeVar("T")

CONFIG = ConfigDict(extra="forbid", use_attribute_docstrings=True)
"""Every config class: unknown names are errors, and an attribute's docstring is its help."""

EXIT_USAGE = 2
"""Exit status of a command refused for its settings or command line (as argparse's)."""
EXIT_FAILURE = 1
"""Exit status of a command that could not do what its settings asked (a port in use, ...)."""


PURE_PYTHON_ENV = "RELAY_PURE_PYTHON"
"""Set to 1 (or true, yes): the relay runs its Python code even where its C part is built
(setup.py's extensions, each imported through `native`), to rule the C part out when looking into
a problem. Read once, when those modules are imported (with the zygote spawner, in the control
plane's environment)."""


def pure_python(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether RELAY_PURE_PYTHON asks for the Python code."""
    return environ.get(PURE_PYTHON_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def native(module: str) -> types.ModuleType | None:
    """The C part's extension `module` (relay.server._ratelimit, ...) where it was built and
    RELAY_PURE_PYTHON does not refuse it; else None, and the caller runs its Python twin."""
    if pure_python():
        return None
    try:
        return importlib.import_module(module)
    except ImportError:  # not built here (no C compiler)
        return None


class SettingsError(ValueError):
    """A setting or command line that cannot be used. Its message is one line for the user: the
    setting, where its value came from and what it must be."""


def _split_words(value: Any) -> Any:
    """A list setting given as one string (a flag, a variable) is split as a shell would."""
    return tuple(shlex.split(value)) if isinstance(value, str) else value


Words = Annotated[tuple[str, ...], BeforeValidator(_split_words)]
"""A list of words: a JSON list in a file, a shell-quoted string in a flag or variable."""


# --- the fields of a config class ----------------------------------------------------------------


def fields_of(cls: type) -> dict[str, FieldInfo]:
    """A pydantic dataclass's fields, with their types, constraints and descriptions."""
    found: dict[str, FieldInfo] = cls.__pydantic_fields__  # type: ignore[attr-defined]
    return found


def field_doc(cls: type, name: str) -> str:
    """The description of one field (its docstring), on one line."""
    return field_doc_of(fields_of(cls)[name])


def _extra(info: FieldInfo, key: str) -> Any:
    extra = info.json_schema_extra
    return extra.get(key) if isinstance(extra, dict) else None


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _is_bool(info: FieldInfo) -> bool:
    return _unwrap_optional(info.annotation)[0] is bool


def choices(info: FieldInfo) -> tuple[str, ...] | None:
    """The values of a Literal setting; None for any other."""
    annotation = _unwrap_optional(info.annotation)[0]
    return tuple(str(a) for a in get_args(annotation)) if get_origin(annotation) is Literal else None


def form(info: FieldInfo) -> str:
    """What a setting's value must look like, in words ("a whole number from 0 to 65535")."""
    annotation, optional = _unwrap_optional(info.annotation)
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if (options := choices(info)) is not None:
        text = "one of " + ", ".join(options)
    elif annotation is bool:
        text = "true or false"
    elif annotation is int:
        text = "a whole number"
    elif annotation is float:
        text = "a number"
    elif annotation is Path:
        text = "a path"
    elif get_origin(annotation) is tuple:
        text = "a list of words"
    else:
        text = "text"
    bounds: dict[str, Any] = {}
    for item in _constraints(info):
        for key in ("ge", "gt", "le", "lt"):
            if isinstance(item, getattr(annotated_types, key.capitalize())):
                bounds[key] = getattr(item, key)
    if "ge" in bounds and "le" in bounds:
        text += f" from {_show(bounds['ge'])} to {_show(bounds['le'])}"
    else:
        signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
        text += "".join(f" {signs[k]} {_show(v)}" for k, v in bounds.items())
    if optional:
        text += " (or none)"
    return text


def _constraints(info: FieldInfo) -> list[Any]:
    """The field's bounds, also those of an optional type (`Port | None`), which pydantic leaves
    inside the annotation."""
    found = list(info.metadata)
    annotation = _unwrap_optional(info.annotation)[0]
    if get_origin(annotation) is Annotated:
        for item in get_args(annotation)[1:]:
            found.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    return found


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return shlex.join(value) if value else "none"
    return str(value)


def shown_default(info: FieldInfo, default: Any = dataclasses.MISSING) -> str:
    """A setting's default as a user reads it (a field may say it in words: `shown_default`)."""
    if default is dataclasses.MISSING:
        if (words := _extra(info, "shown_default")) is not None:
            return str(words)
        default = info.get_default(call_default_factory=True)
    return _show(default)


# --- how a config class is reached: flags and variables ------------------------------------------


@dataclasses.dataclass(frozen=True)
class Surface:
    """The settings of one command: the fields of its config classes (an earlier class wins a
    name both have), each with a flag and an environment variable."""

    classes: tuple[type, ...]
    env_prefix: str = "RELAY_"
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Variable names other than env_prefix + NAME."""
    flags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Flags other than --name-with-dashes."""
    hidden: frozenset[str] = frozenset()
    """Fields that are not settings (set by the program itself)."""

    @property
    def fields(self) -> dict[str, FieldInfo]:
        out: dict[str, FieldInfo] = {}
        for cls in reversed(self.classes):
            out.update({k: v for k, v in fields_of(cls).items() if k not in self.hidden})
        return out

    def env_name(self, name: str) -> str:
        return self.env.get(name) or self.env_prefix + name.upper()

    def flag(self, name: str) -> str:
        return self.flags.get(name) or "--" + name.replace("_", "-")

    def env_names(self) -> tuple[str, ...]:
        return tuple(self.env_name(name) for name in self.fields)


@dataclasses.dataclass(frozen=True)
class Layer:
    """Values from one source, each with where it was given (for the error that names it)."""

    values: Mapping[str, Any]
    where: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class Merged:
    values: dict[str, Any]
    where: dict[str, str]

    def only(self, cls: type) -> dict[str, Any]:
        """The values that are fields of `cls`."""
        names = fields_of(cls)
        return {k: v for k, v in self.values.items() if k in names}


def defaults_layer(values: Mapping[str, Any], label: str) -> Layer:
    """Defaults a command sets over the class's own (`relay dev`'s)."""
    return Layer(dict(values), {k: f"{label}'s default for {k}" for k in values})


def env_layer(surface: Surface, environ: Mapping[str, str]) -> Layer:
    """Each setting's variable, where set. Other variables are ignored: one environment serves
    several commands (a container's, a test runner's)."""
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for name in surface.fields:
        variable = surface.env_name(name)
        if variable in environ:
            values[name] = environ[variable]
            where[name] = variable
    return Layer(values, where)


def flag_layer(surface: Surface, given: Mapping[str, Any], flags: Mapping[str, str] | None = None) -> Layer:
    """The flags given on the command line (parsed with `add_flags`: absent flags are absent);
    `flags` names a command's own flag for a setting (`relay token --ttl`)."""
    values = {k: v for k, v in given.items() if k in surface.fields}
    return Layer(values, {k: (flags or {}).get(k) or surface.flag(k) for k in values})


def file_layer(surface: Surface, path: str | Path) -> Layer:
    """A JSON object of settings by name. A missing or malformed file, or a name that is not a
    setting, is a SettingsError (a misspelt key would otherwise be silently ignored)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SettingsError(f"config file {path}: not found") from None
    except OSError as exc:
        raise SettingsError(f"config file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise SettingsError(f"config file {path}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: must be a JSON object of settings by name")
    known = surface.fields
    for key in data:
        name = str(key).replace("-", "_")
        if name not in known:
            raise SettingsError(f"config file {path}: {unknown(str(key), known)}")
    values = {str(k).replace("-", "_"): v for k, v in data.items()}
    return Layer(values, {k: f"config file {path}, key {k!r}" for k in values})


def unknown(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{name!r} is not a setting{hint}"


def merge(layers: Sequence[Layer]) -> Merged:
    """Later layers win: pass them lowest first (defaults, file, environment, flags)."""
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for layer in layers:
        values.update(layer.values)
        where.update(layer.where)
    return Merged(values, where)


def validate(cls: type[T], merged: Merged, **fixed: Any) -> T:
    """`cls` from the merged values that are its fields (plus `fixed`, set by the program);
    SettingsError naming the first wrong one."""
    try:
        return cls(**merged.only(cls), **fixed)
    except ValidationError as exc:
        raise SettingsError(describe(cls, exc, merged.where)) from None


def describe(cls: type, exc: ValidationError, where: Mapping[str, str]) -> str:
    """One line for the first error of a validation: the setting, its source, its form."""
    error = exc.errors()[0]
    loc = error.get("loc") or ()
    name = str(loc[0]) if loc else ""
    info = fields_of(cls).get(name)
    kind = error["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return unknown(name, fields_of(cls))
    if info is None:
        return f"{name}: {error['msg']}"
    source = where.get(name)
    value = "(secret)" if _extra(info, "secret") else repr(error.get("input"))
    if source is None:
        given = f"{name} (default {shown_default(info)})"
    elif source.startswith("config file"):
        given = f"{source}: {value}"
    else:
        given = f"{source}={value}" if value != "(secret)" else source
    if kind == "missing":
        return f"{name} is required"
    if kind == "value_error":
        reason = str((error.get("ctx") or {}).get("error") or error["msg"])
        return f"{given}: {name}: {reason}"
    return f"{given}: {name} must be {form(info)}"


# --- flags, help and documentation ---------------------------------------------------------------


def help_text(surface: Surface, name: str, default: Any = dataclasses.MISSING, env: bool = True) -> str:
    """A setting's description, default and variable, for --help and the docs' tables."""
    info = surface.fields[name]
    text = field_doc_of(info)
    parts = [f"default: {shown_default(info, default)}"]
    if env:
        parts.append(f"env {surface.env_name(name)}")
    return f"{text} ({'; '.join(parts)})"


def field_doc_of(info: FieldInfo) -> str:
    """A field's description on one line."""
    return " ".join((info.description or "").split())


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    surface: Surface,
    names: Iterable[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """A flag per setting (or per one of `names`), whose help says its default and variable.
    Absent flags stay absent from the parsed namespace (argparse.SUPPRESS), so the layers below
    them (variables, the config file) show through; values stay text for the config to check."""
    fields = surface.fields
    for name in names if names is not None else fields:
        info = fields[name]
        default = (defaults or {}).get(name, dataclasses.MISSING)
        text = help_text(surface, name, default).replace("%", "%%")
        if _is_bool(info):
            parser.add_argument(
                surface.flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=text,
            )
            continue
        parser.add_argument(
            surface.flag(name), dest=name, default=argparse.SUPPRESS, metavar=metavar(name, info), help=text
        )


_SECONDS = ("timeout", "interval", "grace", "after", "lifetime", "tick", "delay", "window", "ttl", "for")


def metavar(name: str, info: FieldInfo) -> str:
    """A flag's value in its usage line: the choices, or what kind of value (SECONDS, N, PORT, ...)."""
    if (options := choices(info)) is not None:
        return "{" + ",".join(options) + "}"
    annotation = _unwrap_optional(info.annotation)[0]
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    words = name.split("_")
    last = words[-1]
    seconds = last == "seconds" or any(word in _SECONDS for word in words)
    if annotation is float:
        return "SECONDS" if seconds else "NUMBER"
    if annotation is int:
        return "PORT" if last == "port" else "SECONDS" if seconds else "N"
    if annotation is Path:
        return "DIR" if last == "dir" else "FILE"
    if get_origin(annotation) is tuple:
        return "'WORDS ...'"
    return last.upper()


def markdown_table(surface: Surface, defaults: Mapping[str, Any] | None = None) -> str:
    """The settings as a Markdown table: name, flag, variable, default, accepted form, meaning."""
    rows = [
        "| setting | flag | environment | default | accepts | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for name, info in surface.fields.items():
        default = (defaults or {}).get(name, dataclasses.MISSING)
        flag = surface.flag(name)
        flags = f"`{flag}` / `--no-{flag[2:]}`" if _is_bool(info) else f"`{flag}`"
        meaning = field_doc_of(info).replace("|", "\\|")
        rows.append(
            f"| {name} | {flags} | `{surface.env_name(name)}` | {shown_default(info, default)} | "
            f"{form(info)} | {meaning} |"
        )
    return "\n".join(rows) + "\n"


class CommandParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (a SettingsError), not its usage block
    followed by the error: the command prints that line and exits 2."""

    def error(self, message: str) -> NoReturn:
        raise SettingsError(f"{message} (see {self.prog} --help)")


def fail(prog: str, problem: BaseException | str, code: int = EXIT_USAGE) -> int:
    """Prints `prog: problem` as one line on stderr; returns the exit status to use."""
    print(f"{prog}: {' '.join(str(problem).split())}", file=sys.stderr, flush=True)
    return code


def typed_command(name: str = "") -> str:
    """This interpreter, or the `name` script beside it, as a user can type it from here
    (`.venv/bin/python3`, `.venv/bin/relay` in a checkout): what a hint tells a user to run."""
    path = Path(sys.executable)
    if name:
        path = path.with_name(name)
        if not path.exists():
            return name  # not installed beside it: hope it is on PATH
    here = os.path.relpath(path)
    return here if not here.startswith("..") else str(path)


class ListenError(OSError):
    """A server that could not listen: `where` names it (host:port, and which of its ports)."""

    def __init__(self, exc: OSError, where: str) -> None:
        super().__init__(exc.errno, os.strerror(exc.errno) if exc.errno else str(exc))
        self.where = where


def os_error(exc: OSError, what: str, hint: str = "") -> str:
    """An OSError of starting a server as one line: what failed, why (the OS's words), what to do."""
    why = (exc.strerror or str(exc)).lower() if exc.errno else str(exc)
    reasons = {
        errno.EADDRINUSE: "another process is using it",
        errno.EACCES: "ports below 1024 need privileges",
        errno.EPERM: "not permitted",
        errno.EADDRNOTAVAIL: "that address is not one of this machine's",
    }
    notes = [note for note in (reasons.get(exc.errno or 0, ""), hint) if note]
    return f"{what}: {why}" + (f" ({'; '.join(notes)})" if notes else "")
