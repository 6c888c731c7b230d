"""The Parquet contracts in schemas/: loadable as data, enforced on write."""

import json
from pathlib import Path

import pyarrow as pa
import pytest

from moaa.core import schemas

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted((ROOT / "schemas").glob("*.json")), ids=lambda p: p.stem)
def test_every_schema_file_is_documented_data(path):
    doc = json.loads(path.read_text())
    assert doc["name"] == path.stem and doc["description"] and doc["written_by"]
    for col in doc["columns"]:
        assert col["description"], f"{path.name}: column {col['name']} has no description"
    schema = schemas.arrow_schema(path.stem)
    assert schema.names == [c["name"] for c in doc["columns"]]


def test_parse_type_reads_nested_arrow_spellings():
    t = schemas.parse_type("list<struct<role: string, content: string>>")
    assert t == pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    assert schemas.parse_type("list<item: int32>") == pa.list_(pa.int32())
    with pytest.raises(schemas.SchemaError):
        schemas.parse_type("varchar")


def _prompt(**kw):
    return {
        "prompt_id": "a",
        "source": "s",
        "messages": [{"role": "user", "content": "q"}],
        "n_turns": 1,
    } | kw


def test_to_table_names_the_row_that_does_not_fit():
    with pytest.raises(schemas.SchemaError, match="row 1"):
        schemas.to_table([_prompt(), _prompt(n_turns="two")], "prompts")
    with pytest.raises(schemas.SchemaError, match="'prompt_id' has 1 null"):
        schemas.to_table([_prompt(prompt_id=None)], "prompts")


def test_validate_names_missing_extra_and_mistyped_columns():
    good = schemas.to_table([_prompt()], "prompts")
    schemas.validate(good, "prompts")
    with pytest.raises(schemas.SchemaError, match=r"missing column\(s\) \['n_turns'\]"):
        schemas.validate(good.drop_columns(["n_turns"]), "prompts", where="x.parquet")
    with pytest.raises(schemas.SchemaError, match="unexpected column"):
        schemas.validate(good.append_column("extra", pa.array([1])), "prompts")
    mistyped = good.set_column(3, "n_turns", pa.array(["1"]))
    with pytest.raises(schemas.SchemaError, match="column 'n_turns' is string, expected int32"):
        schemas.validate(mistyped, "prompts")
