"""Metadata values for the UI: Parquet column schemas and table previews."""

from __future__ import annotations

import dagster as dg
import pyarrow as pa
import pytest

from ai_assets.lib.metadata import column_schema, preview_table, table_metadata

COLUMNS = [dg.TableColumn("id"), dg.TableColumn("score", "float"), dg.TableColumn("note")]


def test_column_schema_follows_the_arrow_schema() -> None:
    schema = pa.schema([pa.field("id", pa.string(), nullable=False), ("n", pa.int32()), ("v", pa.list_(pa.float32()))])
    columns = column_schema(schema).columns
    assert [(c.name, c.type, c.constraints.nullable) for c in columns] == [
        ("id", "string", False),
        ("n", "int32", True),
        ("v", "list<item: float>", True),
    ]


def test_preview_rows_become_records_with_every_column() -> None:
    value = preview_table(COLUMNS, [{"id": "q1", "score": 0.25, "note": "two\nlines"}, {"id": "q2"}], width=None)
    assert [c.name for c in value.schema.columns] == ["id", "score", "note"]
    assert [r.data for r in value.records] == [
        {"id": "q1", "score": 0.25, "note": "two lines"},  # one line per cell
        {"id": "q2", "score": None, "note": None},
    ]
    assert isinstance(value.records[0].data["score"], float)  # numbers stay numbers


def test_long_text_is_clipped_only_when_asked() -> None:
    text = "x" * 50
    assert preview_table(COLUMNS, [{"note": text}], width=10).records[0].data["note"] == "x" * 9 + "…"
    assert preview_table(COLUMNS, [{"note": text}], width=None).records[0].data["note"] == text


def test_bad_rows_are_named() -> None:
    with pytest.raises(ValueError, match=r"preview row 2 has columns \['extra'\]"):
        preview_table(COLUMNS, [{"id": "a"}, {"id": "b", "extra": 1}])
    with pytest.raises(TypeError, match=r"preview row 1, column 'note': list is not a table cell"):
        preview_table(COLUMNS, [{"note": ["a"]}])


def test_table_metadata_uses_the_standard_keys() -> None:
    plain = table_metadata(12)
    assert {k: v.value for k, v in plain.items()} == {"dagster/row_count": 12}
    full = table_metadata(7, partitioned=True, schema=pa.schema([("id", pa.string())]))
    assert full["dagster/row_count"].value == full["dagster/partition_row_count"].value == 7
    assert [c.name for c in full["dagster/column_schema"].value.columns] == ["id"]
