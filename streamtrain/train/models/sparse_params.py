"""Hyperparameters shared by the models with embedding tables (``dlrm``, ``fm``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import Field, model_validator

from streamtrain.sample.spec import SparseFeature
from streamtrain.train.models._params import ModelParams
from streamtrain.train.models.standardize import StandardizeParams

_DYNAMIC_ONLY = (
    "capacity",
    "fallback_rows",
    "admit_after",
    "admit_probability",
    "filter_cells",
    "evict",
    "expire_after_steps",
    "seed",
)


class TableSettings(ModelParams):
    """One table's kind: ``hashed`` (IDs hash onto ``rows``) or ``dynamic`` (docs/models.md,
    "Dynamic tables": each admitted ID owns a row of ``capacity``; the others share
    ``fallback_rows`` hashed rows)."""

    kind: Literal["hashed", "dynamic"] = Field("hashed", description="hashed or dynamic.")
    capacity: int = Field(0, ge=0, description="dynamic: rows owned by admitted IDs.")
    fallback_rows: int = Field(1, ge=1, description="dynamic: hashed rows of IDs not admitted.")
    admit_after: int = Field(1, ge=1, description="dynamic: occurrences before admission.")
    admit_probability: float = Field(
        1.0, gt=0, le=1, description="dynamic: chance each occurrence past the count admits."
    )
    filter_cells: int = Field(
        0, ge=0, description="dynamic: counters of the admission filter (0: 4 x capacity)."
    )
    evict: Literal["lru", "lfu"] = Field("lru", description="dynamic: victim when full.")
    expire_after_steps: int = Field(
        0, ge=0, description="dynamic: free the row of an ID unseen this many steps (0: never)."
    )
    seed: int = Field(0, description="dynamic: seed of the admission draws and row resets.")
    sharding: Literal["replicated", "row_wise"] = Field(
        "replicated",
        description="Several ranks: every rank holds the table, or each holds 1/N of its rows.",
    )

    @model_validator(mode="after")
    def _check_kind(self) -> TableSettings:
        if self.kind == "hashed":
            extra = sorted(set(_DYNAMIC_ONLY) & self.model_fields_set)
            if extra:
                raise ValueError(
                    f"{extra[0]} applies to kind dynamic only; set kind: dynamic, or size a "
                    "hashed table with table_rows"
                )
        elif self.capacity < 1:
            raise ValueError("a dynamic table needs capacity >= 1 (rows owned by admitted IDs)")
        if self.kind == "dynamic" and self.sharding == "row_wise":
            raise ValueError(
                "sharding row_wise applies to hashed tables only (a dynamic table's admission "
                "state is replicated): use sharding: replicated, or kind: hashed"
            )
        return self

    @property
    def cells(self) -> int:
        """Counters of the admission filter (none when every ID is admitted on sight)."""
        if self.admit_after <= 1:
            return 0
        return self.filter_cells or 4 * self.capacity


class TableParams(StandardizeParams):
    """Table sizes and pooling, plus the dense features' ``standardize`` switches."""

    embedding_dim: int = Field(16, ge=1, description="Width of every embedding row.")
    rows: int = Field(
        1 << 16, ge=1, description="Rows of each table (IDs hash onto them; docs/models.md)."
    )
    table_rows: dict[str, int] = Field({}, description="Rows of a named table, overriding `rows`.")
    tables: dict[str, TableSettings] = Field(
        {}, description="Per table: kind hashed (default) or dynamic, and its settings."
    )
    pooling: dict[str, Literal["sum", "mean"]] = Field(
        {}, description="Per feature: sum or mean (default) of its rows."
    )
    init_std: float = Field(0.01, gt=0, description="Std of the normal row initialisation.")

    @model_validator(mode="after")
    def _check_tables(self) -> TableParams:
        for name, table in self.tables.items():
            if table.kind == "dynamic" and name in self.table_rows:
                raise ValueError(
                    f"table {name!r} is dynamic: size it with tables.{name}.capacity, not "
                    "table_rows"
                )
        return self


def checked_tables(
    features: Sequence[SparseFeature],
    table_rows: Mapping[str, int],
    pooling: Mapping[str, str],
    kinds: Mapping[str, TableSettings],
) -> set[str]:
    """The tables ``features`` name, once every setting that names a table or feature is
    checked against them (one line saying what to fix otherwise)."""
    names = {f.name for f in features}
    tables = {f.table for f in features}
    for name, size in table_rows.items():
        if name not in tables or size < 1:
            raise ValueError(
                f"table_rows names {name!r}={size}; tables are {sorted(tables)} and need >= 1 row"
            )
    for name, mode in pooling.items():
        if name not in names or mode not in ("sum", "mean"):
            raise ValueError(
                f"pooling {name!r}={mode!r}: use a feature of {sorted(names)} and sum or mean"
            )
    unknown = sorted(set(kinds) - tables)
    if unknown:
        raise ValueError(f"tables names {unknown[0]!r}; the tables are {sorted(tables)}")
    for table in tables:
        if not table.isidentifier():
            raise ValueError(
                f"table name {table!r} must be a Python identifier (letters, digits, _)"
            )
    return tables
