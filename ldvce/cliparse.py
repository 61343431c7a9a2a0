"""Command-line parsers built from function signatures (jsonargparse), for the ``ldvce`` command.

A command is a plain function registered under its path (``"generate"``, ``"toy make-data"``):
its parameters become the arguments, their types and defaults the parsing, their numpy-style
docstring entries the help, and the first paragraph of its docstring the command's help.
Parameters before the ``*`` become positional arguments (optional when they have a default);
keyword-only parameters become ``--flags`` (underscores written as dashes: ``batch_size`` →
``--batch-size``), required when they have no default. ``bool`` parameters that default to False are switches, ``list[X]``
takes one or more values, ``Literal[...]`` lists its choices. A command may also ``extend`` its
parser (e.g. one option group per sampler from the sampler's signature); extensions run only
when that command is parsed, so heavy imports they need never slow down ``ldvce --help``.
"""
from __future__ import annotations

import argparse
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Callable, Literal


@dataclass
class Command:
    path: tuple[str, ...]
    function: Callable | None = None          # None for a group of commands (``toy``)
    help: str = ""
    description: str | None = None
    epilog: str | None = None
    extend: Callable | None = None            # extend(parser): more arguments (lazily)
    passthrough: bool = False                 # arguments go to the function unparsed


@dataclass
class Registry:
    """The commands of one program, in registration (= help) order."""
    commands: dict[tuple[str, ...], Command] = field(default_factory=dict)

    def group(self, path: str, help: str, description: str | None = None) -> None:
        """A command with sub-commands (``ldvce toy ACTION``)."""
        p = tuple(path.split())
        self.commands[p] = Command(p, None, help, description)

    def command(self, path: str, *, extend: Callable | None = None, passthrough: bool = False,
                description: str | None = None, epilog: str | None = None) -> Callable:
        """Decorator: register ``function`` as the command ``path`` ("toy make-data")."""
        def register(function: Callable) -> Callable:
            p = tuple(path.split())
            if p[:-1] and p[:-1] not in self.commands:
                raise ValueError(f"register the group {' '.join(p[:-1])!r} before {path!r}")
            self.commands[p] = Command(p, function, summary(function), description, epilog,
                                       extend, passthrough)
            return function
        return register

    def children(self, path: tuple[str, ...]) -> list[Command]:
        return [c for p, c in self.commands.items() if len(p) == len(path) + 1 and p[:-1] == path]


# -------------------------------------------------------------------------------- docstrings
def summary(function: Callable) -> str:
    """First paragraph of the docstring, on one line."""
    doc = inspect.getdoc(function) or ""
    return " ".join(doc.split("\n\n")[0].split())


def description(function: Callable) -> str:
    """The docstring up to its Parameters section."""
    doc = inspect.getdoc(function) or ""
    for marker in ("\nParameters\n", "\nReturns\n"):
        doc = doc.split(marker)[0]
    return doc.strip()


def parameter_help(function: Callable) -> dict[str, str]:
    """Numpy-style ``Parameters`` entries of the docstring: name → text on one line."""
    import docstring_parser
    doc = docstring_parser.parse(inspect.getdoc(function) or "",
                                 style=docstring_parser.DocstringStyle.NUMPYDOC)
    return {p.arg_name: " ".join((p.description or "").split()) for p in doc.params}


# ------------------------------------------------------------------------------- arguments
def _strip_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _type_kwargs(name: str, tp, default) -> dict:
    tp = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if tp is bool:
        if default is not False:
            raise TypeError(f"{name}: a bool flag must default to False (a switch)")
        return {"action": "store_true"}
    if origin is Literal:
        choices = list(typing.get_args(tp))
        return {"choices": choices} if all(isinstance(c, str) for c in choices) else \
            {"choices": choices, "type": type(choices[0])}
    if origin is list:
        item, = typing.get_args(tp)
        return {"type": item, "nargs": "+"}
    if tp in (int, float, str):
        return {"type": tp}
    raise TypeError(f"{name}: unsupported type {tp!r} for a command-line argument")


def add_signature_arguments(parser, function: Callable) -> None:
    """Add one argument per parameter of ``function`` (see the module docstring)."""
    helps = parameter_help(function)
    hints = typing.get_type_hints(function)
    for name, p in inspect.signature(function).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if not helps.get(name):
            raise ValueError(f"{function.__qualname__}: parameter {name!r} has no docstring entry "
                             "(it is the option's help)")
        kwargs = _type_kwargs(name, hints.get(name, str), p.default)
        kwargs["help"] = helps[name]
        if p.kind is p.POSITIONAL_OR_KEYWORD:
            if p.default is not p.empty:
                kwargs.update(nargs="?", default=p.default)
            parser.add_argument(name, **kwargs)
            continue
        if p.default is p.empty:
            kwargs["required"] = True
        elif kwargs.get("action") != "store_true":
            kwargs["default"] = p.default
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)


# ---------------------------------------------------------------------------------- parsers
def _formatter():
    from jsonargparse import DefaultHelpFormatter

    class Formatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
        """jsonargparse's help (types, defaults) with descriptions and epilogs kept as written."""
    return Formatter


def build_parser(registry: Registry, prog: str, description: str, epilog: str = "",
                 selected: tuple[str, ...] = ()):
    """The jsonargparse parser of every registered command. Extensions run only for the
    commands on the ``selected`` path (the one being parsed)."""
    from jsonargparse import ArgumentParser
    fmt = _formatter()
    root = ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=fmt)

    def fill(parser, path):
        kids = registry.children(path)
        if not kids:
            return
        sub = parser.add_subcommands(dest="subcommand", required=True, metavar="COMMAND")
        for c in kids:
            f = c.function
            p = ArgumentParser(formatter_class=fmt, add_help=not c.passthrough,
                               description=c.description or (description_of(c)),
                               epilog=c.epilog)
            sub.add_subcommand(c.path[-1], p, help=c.help)
            if f is not None and not c.passthrough:
                add_signature_arguments(p, f)
            if c.extend is not None and c.path == selected[:len(c.path)]:
                c.extend(p)
            fill(p, c.path)

    fill(root, ())
    return root


def description_of(c: Command) -> str:
    return description(c.function) if c.function is not None else c.help


def selected_path(registry: Registry, argv: list[str]) -> tuple[str, ...]:
    """The command path named by ``argv`` (its leading non-option words that are commands)."""
    path: tuple[str, ...] = ()
    for word in argv:
        if word.startswith("-"):
            continue
        if path + (word,) not in registry.commands:
            break
        path += (word,)
    return path


def parse(registry: Registry, parser, argv: list[str]) -> tuple[Command, dict]:
    """Parse ``argv``; returns the command and its keyword arguments (nested groups as dicts)."""
    cfg = parser.parse_args(argv)
    path: tuple[str, ...] = ()
    node = cfg
    while "subcommand" in node and node.subcommand:
        path += (node.subcommand,)
        node = node[node.subcommand]
    kwargs = {k: v for k, v in node.as_dict().items() if k != "subcommand"}
    return registry.commands[path], kwargs
