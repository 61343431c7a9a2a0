"""Experiment settings from ``configs/experiment/*.yaml`` (read with jsonargparse, as the CLI is).

Each experiment owns a frozen dataclass of its settings (e.g.
:class:`experiments.clever_hans.data.CleverHansConfig`); :func:`load_config` fills it from a
YAML file, by name (``"clever-hans"`` → ``configs/experiment/clever-hans.yaml``) or path, so a
number in the docs can name the file and the command that produced it. Unknown keys and wrong
types are errors that name the file.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TypeVar

from jsonargparse import ArgumentParser

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "experiment"

T = TypeVar("T")


class ConfigError(ValueError):
    """An experiment config that cannot be read (missing, unknown key, wrong type)."""


def config_path(name_or_path: str | Path) -> Path:
    """``configs/experiment/<name>.yaml`` for a plain name, else the path itself."""
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml") and p.parent == Path("."):
        p = CONFIGS / f"{p}.yaml"
    if not p.is_file():
        known = ", ".join(sorted(f.stem for f in CONFIGS.glob("*.yaml")))
        raise ConfigError(f"no experiment config {p} (shipped: {known})")
    return p


def load_config(cls: type[T], name_or_path: str | Path, **overrides) -> T:
    """An instance of the dataclass ``cls`` from a YAML file, ``overrides`` (not None) on top."""
    path = config_path(name_or_path)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls)
    try:
        ns = parser.parse_path(str(path))
    except Exception as e:  # jsonargparse's ArgumentError: say which file
        raise ConfigError(f"{path}: {e}") from e
    values = {k: v for k, v in ns.as_dict().items() if not k.startswith("__")}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def as_dict(config) -> dict:
    """A config as a plain dict (for ``summary.json``)."""
    return dataclasses.asdict(config)
