"""Flags generated from a dataclass's field declarations (``bitfit.config.setting``).

    parser = make_parser("run_glue.py", "...")
    add_dataclass_flags(parser, RunConfig)         # --learning-rate/-l, --bias-terms ROLE [ROLE ...], ...
    cfg = RunConfig(**vars(parser.parse_args()))

A field ``foo_bar`` becomes ``--foo-bar`` (plus its ``short`` form); ``bool`` fields become switches
(``--x`` for a False default, ``--x/--no-x`` for a True one); ``list[...]`` fields take one or more
values; ``T | None`` fields take a T. Help, choices and metavar come from the field's metadata.
Fields without a default (``None``) that ``required`` lists are required flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

_SCALARS = {"str": str, "int": int, "float": float, "bool": bool}


def _kind(annotation: str) -> tuple[type, bool]:
    """(element type, is a list) from a field's annotation string, e.g. 'list[str] | None' -> (str, True)."""
    text = annotation.replace(" ", "").removesuffix("|None")
    is_list = text.startswith("list[")
    name = text[len("list["):-1] if is_list else text
    if name not in _SCALARS:
        raise TypeError(f"no flag for a field of type {annotation!r}")
    return _SCALARS[name], is_list


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, required: typing.Iterable[str] = ()) -> None:
    required = set(required)
    for f in dataclasses.fields(cls):
        md = f.metadata
        names = ([md["short"]] if md.get("short") else []) + [flag_name(f.name)]
        kw: dict = {"dest": f.name, "help": md.get("help"), "default": f.default}
        typ, is_list = _kind(f.type if isinstance(f.type, str) else f.type.__name__)
        if typ is bool:
            kw["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
        else:
            kw["type"] = typ
            if is_list:
                kw["nargs"] = "+"
            for key in ("choices", "metavar"):
                if md.get(key):
                    kw[key] = md[key]
        if f.name in required:
            kw["required"] = True
        parser.add_argument(*names, **kw)
