"""Metadata values the Dagster UI renders natively: column schemas of Parquet tables, and small
previews as tables (sortable, one cell per value) instead of hand-built Markdown."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dagster as dg
import pyarrow as pa

# What a `dg.TableRecord` cell may hold.
CellValue = str | int | float | bool | None

# Dagster's standard table keys (`dagster.TableMetadataSet`, which 1.13 does not export at the top level).
ROW_COUNT = "dagster/row_count"
PARTITION_ROW_COUNT = "dagster/partition_row_count"
COLUMN_SCHEMA = "dagster/column_schema"


def table_metadata(
    row_count: int, *, partitioned: bool = False, schema: pa.Schema | None = None
) -> dict[str, dg.MetadataValue]:
    """The standard metadata of a table the UI shows: its row count (also as the partition's row count
    when each partition is a table of its own) and, when known, its column schema."""
    metadata: dict[str, dg.MetadataValue] = {ROW_COUNT: dg.MetadataValue.int(row_count)}
    if partitioned:
        metadata[PARTITION_ROW_COUNT] = dg.MetadataValue.int(row_count)
    if schema is not None:
        metadata[COLUMN_SCHEMA] = dg.MetadataValue.table_schema(column_schema(schema))
    return metadata


def column_schema(schema: pa.Schema) -> dg.TableSchema:
    """A Parquet/Arrow schema as Dagster's column schema (`dagster/column_schema`): one column per
    field, with the Arrow type name and its nullability."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=f.name,
                type=str(f.type),
                constraints=dg.TableColumnConstraints(nullable=f.nullable),
            )
            for f in schema
        ]
    )


def clip(text: str, width: int | None) -> str:
    """One line of at most `width` characters (None: any length), so a long answer keeps the table
    readable. Only line breaks become spaces: paths and messages stay as they were written."""
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def preview_table(
    columns: Sequence[dg.TableColumn], rows: Iterable[Mapping[str, Any]], width: int | None = 160
) -> dg.TableMetadataValue:
    """`rows` as a table with exactly `columns` (missing cells are empty); strings are clipped to
    `width` characters (None: kept whole, for messages that say what to fix).

    A cell that is not a string, number, bool or None is a programming error: it is named (column and
    row) instead of being turned into text silently.
    """
    names = [c.name for c in columns]
    records = []
    for number, row in enumerate(rows, start=1):
        unknown = set(row) - set(names)
        if unknown:
            raise ValueError(f"preview row {number} has columns {sorted(unknown)} outside the schema {names}")
        cells: dict[str, CellValue] = {}
        for name in names:
            value = row.get(name)
            if isinstance(value, str):
                value = clip(value, width)
            elif value is not None and not isinstance(value, int | float | bool):
                raise TypeError(
                    f"preview row {number}, column {name!r}: {type(value).__name__} is not a table cell "
                    "(str, int, float, bool or None)"
                )
            cells[name] = value
        records.append(dg.TableRecord(cells))
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=list(columns)))
