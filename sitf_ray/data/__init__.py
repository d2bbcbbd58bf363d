"""Vendored benchmark files (see README.md here for sources, licenses, hashes) and strict JSONL reading.

Every loader goes through `read_jsonl` (a local file, gzip or not) or `hub_rows` (a dataset hub name,
`datasets` is imported only then), and `check_row`, so a bad row fails early with a message that
names the file, the line and the field:

    DataError: mbpp.jsonl line 17: field 'test_list' must be a list of str, got list containing int
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterable, Optional


DATA_DIR = Path(__file__).resolve().parent


class DataError(ValueError):
    """A data row is unusable; the message names the file/row and the field."""

# Field specs: str (non-empty unless listed in `may_be_empty`), int, or list of str.
STR, INT, STR_LIST = "str", "int", "list[str]"


def data_path(name: str) -> Path:
    """A vendored file, e.g. data_path('mbpp.jsonl') or data_path('sipf/mmlu_math_test.jsonl')."""
    p = DATA_DIR / name
    if not p.is_file():
        raise DataError(f"vendored data file {p} is missing (reinstall the package)")
    return p


def _type_name(v: Any) -> str:
    if isinstance(v, list):
        inner = sorted({type(x).__name__ for x in v if not isinstance(x, str)})
        return f"list containing {', '.join(inner)}" if inner else "list"
    return type(v).__name__


def check_row(row: Any, spec: dict[str, str], where: str, may_be_empty: Iterable[str] = ()) -> dict:
    """Validate one decoded row against `spec`; `where` is 'file line N' for the message."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    empty_ok = set(may_be_empty)
    for field, kind in spec.items():
        if field not in row:
            raise DataError(f"{where}: field {field!r} is missing")
        v = row[field]
        if kind == STR:
            if not isinstance(v, str):
                raise DataError(f"{where}: field {field!r} must be str, got {_type_name(v)}")
            if field not in empty_ok and not v.strip():
                raise DataError(f"{where}: field {field!r} is empty")
        elif kind == INT:
            if isinstance(v, bool) or not isinstance(v, int):
                raise DataError(f"{where}: field {field!r} must be int, got {_type_name(v)}")
        elif kind == STR_LIST:
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise DataError(f"{where}: field {field!r} must be a list of str, got {_type_name(v)}")
            if field not in empty_ok and not v:
                raise DataError(f"{where}: field {field!r} is empty")
        else:  # pragma: no cover - programming error
            raise ValueError(f"unknown field kind {kind!r}")
    return row


def read_jsonl(path: str | Path, spec: dict[str, str], *, id_field: Optional[str] = None,
               may_be_empty: Iterable[str] = ()) -> list[dict]:
    """All rows of a JSON Lines file (.gz read transparently), each checked against `spec`.

    Blank lines are skipped; `id_field` values must be unique. Errors name file, line and field.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: data file not found")
    opener = gzip.open if p.suffix == ".gz" else open
    rows, seen = [], {}
    try:
        with opener(p, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                where = f"{p.name} line {lineno}"
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{where}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
                check_row(row, spec, where, may_be_empty)
                if id_field is not None:
                    key = row.get(id_field)
                    if key in seen:
                        raise DataError(f"{where}: duplicate {id_field} {key!r} (first on line {seen[key]})")
                    seen[key] = lineno
                row["_line"] = lineno
                rows.append(row)
    except (OSError, EOFError) as e:   # e.g. a truncated or non-gzip .gz file
        raise DataError(f"{p}: cannot read ({e})") from None
    return rows


def hub_rows(hub: str, split: str, spec: dict[str, str], *, id_field: Optional[str] = None,
             may_be_empty: Iterable[str] = ()) -> list[dict]:
    """Rows of one split of a dataset-hub dataset, 'name' or 'name:config' (needs network or cache)."""
    name, _, config = hub.partition(":")
    try:
        import datasets  # heavy; only when asked for
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise DataError(f"hub:{hub}: the 'datasets' package is needed ({e})") from None
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:
        raise DataError(f"hub:{hub}: cannot load split {split!r} ({type(e).__name__}: {e})") from None
    rows, seen = [], {}
    for i, row in enumerate(ds, 1):
        where = f"hub:{hub}[{split}] row {i}"
        row = check_row(dict(row), spec, where, may_be_empty)
        if id_field is not None:
            if row[id_field] in seen:
                raise DataError(f"{where}: duplicate {id_field} {row[id_field]!r} (first on row {seen[row[id_field]]})")
            seen[row[id_field]] = i
        row["_line"] = i
        rows.append(row)
    return rows


def source_path(cfg_path: Optional[str], default_name: str, source: str) -> Path:
    """Where a task reads `source` ('train', 'test', ...) from.

    `cfg.path` may be a directory holding files named like the vendored ones, a template containing
    '{source}' (e.g. 'my/gsm8k_{source}.jsonl'), or one file used for every source.
    """
    if not cfg_path:
        return data_path(default_name)
    p = Path(str(cfg_path).format(source=source) if "{source}" in str(cfg_path) else cfg_path)
    if p.is_dir():
        for cand in (p / default_name, p / default_name.removesuffix(".gz"), p / Path(default_name).name):
            if cand.is_file():
                return cand
        raise DataError(f"{p}: no {Path(default_name).name} in this directory")
    return p


__all__ = ["DATA_DIR", "data_path", "read_jsonl", "hub_rows", "check_row", "source_path",
           "STR", "INT", "STR_LIST"]
