"""Hyperparameters shared by the models with embedding tables (``dlrm``, ``fm``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from streamtrain.train.models.standardize import StandardizeParams


class TableParams(StandardizeParams):
    """Table sizes and pooling, plus the dense features' ``standardize`` switches."""

    embedding_dim: int = Field(16, ge=1, description="Width of every embedding row.")
    rows: int = Field(
        1 << 16, ge=1, description="Rows of each table (IDs hash onto them; docs/models.md)."
    )
    table_rows: dict[str, int] = Field({}, description="Rows of a named table, overriding `rows`.")
    pooling: dict[str, Literal["sum", "mean"]] = Field(
        {}, description="Per feature: sum or mean (default) of its rows."
    )
    init_std: float = Field(0.01, gt=0, description="Std of the normal row initialisation.")
