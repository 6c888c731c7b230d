"""The Parquet contracts of every stage boundary, loaded from ``schemas/*.json``.

Each schema file is plain JSON that any reader can load: a name, a description, the job that writes it
and a list of columns ``{name, type, nullable, description}``. Types use Arrow's spelling:
``string``, ``int32``, ``int64``, ``float64``, ``bool``, ``list<T>``, ``struct<name: T, ...>``.
Every job builds its output table against the schema and ``validate`` checks it before the write.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import pyarrow as pa

from moaa.core.config import UserError

# The top-level ``schemas/`` folder, installed as a package with its JSON files (pyproject.toml), so that a
# non-editable install finds the contracts too.
SCHEMA_PACKAGE = "schemas"

_PRIMITIVES = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
}


class SchemaError(UserError, ValueError):
    """A table or file that does not follow its contract; the message names the column and the fix."""


def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def parse_type(spec: str) -> pa.DataType:
    """Arrow type from its spelling, e.g. ``list<struct<role: string, content: string>>``."""
    spec = spec.strip()
    if spec in _PRIMITIVES:
        return _PRIMITIVES[spec]
    if spec.startswith("list<") and spec.endswith(">"):
        inner = spec[5:-1].strip()
        if inner.startswith("item:"):
            inner = inner[5:]
        return pa.list_(parse_type(inner))
    if spec.startswith("struct<") and spec.endswith(">"):
        fields = []
        for part in _split_top(spec[7:-1]):
            name, _, typ = part.partition(":")
            fields.append(pa.field(name.strip(), parse_type(typ)))
        return pa.struct(fields)
    raise SchemaError(f"unknown type spelling {spec!r}")


@cache
def load(name: str) -> dict[str, Any]:
    """The raw schema document ``schemas/<name>.json``."""
    return json.loads(resources.files(SCHEMA_PACKAGE).joinpath(f"{name}.json").read_text())


@cache
def arrow_schema(name: str) -> pa.Schema:
    doc = load(name)
    return pa.schema(
        [
            pa.field(c["name"], parse_type(c["type"]), nullable=c.get("nullable", False))
            for c in doc["columns"]
        ],
        metadata={"moaa.schema": name},
    )


def to_table(rows: list[dict[str, Any]], name: str) -> pa.Table:
    """Rows (dicts) to a table of schema ``name``; raises ``SchemaError`` naming the offending row."""
    schema = arrow_schema(name)
    try:
        table = pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
        for i, row in enumerate(rows):  # find the first bad row for the message
            try:
                pa.Table.from_pylist([row], schema=schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as row_err:
                raise SchemaError(f"{name}: row {i} does not fit the schema: {row_err}") from e
        raise SchemaError(f"{name}: rows do not fit the schema: {e}") from e
    validate(table, name)
    return table


def validate(table: pa.Table | pa.Schema, name: str, where: str = "") -> None:
    """Check columns, types and non-null columns against schema ``name``. Extra columns are an error
    too: the contract is the whole file."""
    expected = arrow_schema(name)
    schema = table if isinstance(table, pa.Schema) else table.schema
    where = f" in {where}" if where else ""
    missing = [f.name for f in expected if f.name not in schema.names]
    if missing:
        raise SchemaError(
            f"{name}{where}: missing column(s) {missing}; expected {expected.names} (schemas/{name}.json)"
        )
    extra = [n for n in schema.names if n not in expected.names]
    if extra:
        raise SchemaError(f"{name}{where}: unexpected column(s) {extra} (schemas/{name}.json)")
    for f in expected:
        got = schema.field(f.name).type
        if not got.equals(f.type):
            raise SchemaError(
                f"{name}{where}: column {f.name!r} is {got}, expected {f.type} (schemas/{name}.json)"
            )
        if isinstance(table, pa.Table) and not f.nullable and table.column(f.name).null_count:
            raise SchemaError(
                f"{name}{where}: column {f.name!r} has {table.column(f.name).null_count} null(s) "
                "but is required"
            )


def check_columns(schema: pa.Schema, name: str, columns: list[str], where: str = "") -> None:
    """Check that ``columns`` of contract ``name`` are in ``schema`` with the contract's types. Other
    columns are allowed: a reader that needs a few columns must keep working when a later stage adds more."""
    expected = arrow_schema(name)
    where = f" in {where}" if where else ""
    for col in columns:
        want = expected.field(col).type
        if col not in schema.names:
            raise SchemaError(
                f"{name}{where}: missing column {col!r} (expected type {want}); the file has {schema.names} "
                f"(schemas/{name}.json)"
            )
        got = schema.field(col).type
        if not got.equals(want):
            raise SchemaError(
                f"{name}{where}: column {col!r} is {got}, expected {want} (schemas/{name}.json)"
            )
