"""Every config key explained, the resolved config printed, and the nearest name to a misspelt one.

:func:`config_keys` reads :class:`pipeline.config.Config` itself — each section and key, its type,
its default and the one line of help its field carries (``_key(default, help)`` in
:mod:`pipeline.config`) — so ``imbalance config keys`` cannot drift from what ``load_config``
accepts. :func:`format_config` prints a resolved config as ``<run>/config.json`` records it.

:func:`with_suggestion` adds `` — did you mean 'X'?`` to a one-line configuration error that names
a bad value and what is accepted (``unknown loss 'focl' (known: ce, focal, …)``, ``expected source
or train, got 'trian'``): the rules and their lists of names stay with the registries that own
them (see :mod:`pipeline.flows.validate`), and the suggestion is the closest of the names the
error itself lists. Unknown config keys get theirs where they are found, in
:func:`pipeline.config.load_config`. Imports only the ground floor (no Spark, Ray or torch).
"""
from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Optional, Union

import yaml

from pipeline.config import Config, did_you_mean
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class KeyInfo:
    key: str        # dotted (train.epochs); a section: its name (train)
    type: str       # as a config file spells it: int, str or null, list, mapping, any; a section: section
    default: Any    # the dataclass default (a section: None)
    help: str


def type_name(annotation: Any) -> str:
    """How a field's type reads in a config file: ``Optional[str]`` → ``str or null``, ``dict`` → ``mapping``."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        text = " | ".join(type_name(a) for a in args)
        return f"{text} or null" if len(args) < len(typing.get_args(annotation)) else text
    if annotation is Any:
        return "any"
    if origin is typing.Literal:   # an enumerated key reads as its values' type
        return type(typing.get_args(annotation)[0]).__name__
    if dataclasses.is_dataclass(annotation):
        return "section"
    base = origin or annotation
    if base is dict:
        return "mapping"
    return getattr(base, "__name__", str(annotation))


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _section_rows(name: str, f: dataclasses.Field, cls: type) -> list[KeyInfo]:
    hints = typing.get_type_hints(cls)
    rows = [KeyInfo(name, "section", None, f.metadata.get("help", ""))]
    for k in dataclasses.fields(cls):
        rows.append(KeyInfo(f"{name}.{k.name}", type_name(hints[k.name]), _default(k), k.metadata.get("help", "")))
    return rows


def config_keys(only: Optional[str] = None) -> list[KeyInfo]:
    """Every section and key of :class:`Config`, in file order; ``only``: one section, or one key.
    An unknown ``only`` raises :class:`ConfigError` naming the nearest section or key."""
    hints = typing.get_type_hints(Config)
    rows = []
    for f in dataclasses.fields(Config):
        if dataclasses.is_dataclass(hints[f.name]):
            rows += _section_rows(f.name, f, hints[f.name])
    if only is None:
        return rows
    picked = [r for r in rows if r.key == only or r.key.startswith(f"{only}.")]
    if not picked:
        raise ConfigError(f"unknown config section '{only}'" + did_you_mean(only, [r.key for r in rows]))
    return picked


def format_default(value: Any) -> str:
    """A default as YAML reads it back: ``null``, ``true``, ``[128, 64]``, ``{}``; strings bare."""
    if isinstance(value, str):
        return value if value.strip() == value and value else json.dumps(value)
    return json.dumps(value)


def format_keys(rows: list[KeyInfo]) -> str:
    """One line per key: KEY, TYPE, DEFAULT and HELP in aligned columns (a section's default is -)."""
    table = [("KEY", "TYPE", "DEFAULT", "HELP")]
    table += [(r.key, r.type, "-" if r.type == "section" else format_default(r.default), r.help) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3] for row in table)


def format_config(cfg: Config, fmt: str = "json") -> str:
    """The resolved config: JSON as ``<run>/config.json`` holds it, or the same mapping as YAML
    (a config file that loads back to the same config)."""
    d = cfg.to_dict()
    if fmt == "yaml":
        return yaml.safe_dump(d, sort_keys=False, default_flow_style=False).rstrip("\n")
    return json.dumps(d, indent=2, default=str)


# ---------------------------------------------------------------- the nearest accepted value
_NAME = r"'([^']*)'|\"([^\"]*)\""
_GOT = re.compile(rf"\bgot (?:{_NAME})")
_UNKNOWN = re.compile(rf"\bunknown\b[^'\"]*?(?:{_NAME})")
#: Where an error lists what it accepts: "(known: a, b)", "expected a or b, got 'x'", "expected one of a, b".
_CHOICES = (re.compile(r"\((?:known|choose from|choose|allowed|supported): ([^()]*)\)"),
            re.compile(r"\b(?:expected|must be) (?:null or )?(?:one of )?(.+?), got\b"),
            re.compile(r"\bexpected one of (.+)$"))


def _bad_name(message: str) -> Optional[str]:
    m = _GOT.search(message) or _UNKNOWN.search(message)
    return None if m is None else next(g for g in m.groups() if g is not None)


def _choices(message: str) -> list[str]:
    for rx in _CHOICES:
        m = rx.search(message)
        if m:
            return [c.strip() for c in re.split(r",\s*(?:or\s+)?|\s+or\s+", m.group(1)) if c.strip()]
    return []


def with_suggestion(message: str) -> str:
    """``message`` + `` — did you mean 'X'?`` when it names a bad value (or key) and lists what is
    accepted, and one of those is close; else ``message`` unchanged."""
    bad, choices = _bad_name(message), _choices(message)
    if "did you mean" in message or not bad or not choices:
        return message
    prefix = ""
    if "." in bad and not any("." in c for c in choices):   # a dotted key against the names of its mapping
        prefix, bad = bad.rsplit(".", 1)
        prefix += "."
    return message + did_you_mean(bad, [c for c in choices if c != bad], prefix)


__all__ = ["KeyInfo", "config_keys", "format_config", "format_default", "format_keys", "type_name",
           "with_suggestion"]
