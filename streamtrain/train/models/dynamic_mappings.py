"""A model's dynamic tables seen as a whole: finding their mappings, and keeping their ID lookups
true when the serving slot writes mapping buffers from a snapshot (inside its swap, so no request
pays). The mapping itself is :mod:`.dynamic_table`."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from streamtrain.train.models.dynamic_table import DynamicMapping

__all__ = ["dynamic_mappings", "mapping_writes", "owners_before", "refresh_lookups"]


def dynamic_mappings(model: nn.Module) -> dict[str, DynamicMapping]:
    """Every dynamic table's mapping in ``model``, by the state name of its ``slot_ids``."""
    return {
        f"{name}.slot_ids" if name else "slot_ids": module
        for name, module in model.named_modules()
        if isinstance(module, DynamicMapping)
    }


def owners_before(
    model: nn.Module, rows: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """The owners of the mapping rows a delta is about to write (for :func:`refresh_lookups`)."""
    return {
        name: mapping.slot_ids[rows[name][0]].clone()
        for name, mapping in dynamic_mappings(model).items()
        if name in rows
    }


def mapping_writes(
    model: nn.Module,
    whole: Mapping[str, torch.Tensor],
    rows: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
) -> dict[str, torch.Tensor | None]:
    """The ``slot_ids`` a load wrote: the rows a delta wrote, or None when whole (a base)."""
    names = dynamic_mappings(model)
    out: dict[str, torch.Tensor | None] = {n: None for n in names if n in whole}
    return out | {n: rows[n][0] for n in names if n in rows}


def refresh_lookups(
    model: nn.Module, written: Mapping[str, torch.Tensor | None], before: Mapping[str, torch.Tensor]
) -> None:
    """After the serving slot wrote mapping buffers (inside its swap, so no request pays):
    ``written`` names each ``slot_ids`` written, with its rows (None: whole, a base),
    ``before`` the rows' owners until then (:func:`owners_before`)."""
    for name, mapping in dynamic_mappings(model).items():
        if name not in written:
            continue
        rows = written[name]
        if rows is None or name not in before:
            mapping.rebuild()
        else:
            mapping.refresh(rows.cpu(), before[name])
