"""Classifiers by name: ``--classifier NAME`` for packages that ship classifier weights.

The counterpart of :func:`dvce.ldm.register_ldm` for classifiers. A package that ships (or can
train) a classifier registers a short name with a resolver, a callable that returns the path of
its checkpoint (``.ckpt`` or ``.safetensors``) and may train or render what it needs first;
``import toyfaces`` registers ``toy_resnet``, ``toy_resnet18``, ``toy_linear`` and ``toy_oracle``.
Every command that takes ``--classifier`` resolves it with :func:`resolve_classifier`, so a name
works the same way everywhere and a path is checked with one message.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

_REGISTRY: dict[str, Callable[[], str | os.PathLike]] = {}


class ClassifierNotFoundError(FileNotFoundError):
    """Neither a registered classifier name nor an existing checkpoint file."""


def register_classifier(name: str, resolver: Callable[[], str | os.PathLike]) -> None:
    """Make ``resolve_classifier(name)`` (and ``--classifier name``) give ``resolver()``'s path.

    ``resolver`` is called when the name is resolved, so registering costs nothing. Names must
    be plain words (no path separator, no suffix: they would read as files); registering a
    name again replaces it.
    """
    if not name or "/" in name or os.sep in name or "." in name:
        raise ValueError(f"a classifier name must be a plain word, got {name!r}")
    if not callable(resolver):
        raise TypeError(f"resolver for {name!r} must be callable, got {type(resolver).__name__}")
    _REGISTRY[name] = resolver


def registered_classifiers() -> list[str]:
    """The short names :func:`resolve_classifier` accepts besides checkpoint paths."""
    return sorted(_REGISTRY)


def resolve_classifier(name_or_path: str | os.PathLike) -> Path:
    """The checkpoint of a registered classifier name, or ``name_or_path`` itself when that file
    exists; :class:`ClassifierNotFoundError` naming the registered names otherwise."""
    s = str(name_or_path)
    if s in _REGISTRY:
        return Path(_REGISTRY[s]())
    p = Path(s).expanduser()
    if p.exists():
        return p
    known = ", ".join(registered_classifiers()) or "none (import the package that ships them)"
    raise ClassifierNotFoundError(f"classifier checkpoint not found: {p} (or use a registered "
                                  f"name: {known})")
