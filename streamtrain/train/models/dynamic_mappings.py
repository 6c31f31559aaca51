"""A model's dynamic tables seen as a whole: finding their mappings, and keeping their ID lookups
true when the serving slot writes mapping buffers from a snapshot (inside its swap, so no request
pays). The mapping itself is :mod:`.dynamic_table`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from streamtrain.train.models.dynamic_table import DynamicMapping

__all__ = [
    "derived_memo",
    "dynamic_mappings",
    "mapping_writes",
    "owners_before",
    "refresh_lookups",
]


def dynamic_mappings(model: nn.Module) -> dict[str, DynamicMapping]:
    """Every dynamic table's mapping in ``model``, by the state name of its ``slot_ids``."""
    return {
        f"{name}.slot_ids" if name else "slot_ids": module
        for name, module in model.named_modules()
        if isinstance(module, DynamicMapping)
    }


def derived_memo(model: nn.Module) -> dict[int, object]:
    """``copy.deepcopy`` memo entries that leave each mapping's derived state out of a copy of
    ``model`` (the serving slot's second copy, a retained version): deepcopy would copy the
    numpy views of the buffers as arrays (96 MB at 4M rows, dropped again at the first
    base) that view nothing of the copy's. The copy rebuilds its derived state from its own
    buffers when first used (``DynamicMapping._sorted``), as after a load."""
    memo: dict[int, object] = {}
    for mapping in dynamic_mappings(model).values():
        for name in _DERIVED:
            value = mapping.__dict__.get(name)
            if value is not None:
                memo[id(value)] = None
    return memo


_DERIVED = ("_views", "_lookup", "_placement", "_answer")


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
    models: Sequence[nn.Module],
    written: Mapping[str, torch.Tensor | None],
    before: Mapping[str, torch.Tensor],
) -> None:
    """After the serving slot wrote mapping buffers (inside its swap, so no request pays):
    ``written`` names each ``slot_ids`` written, with its rows (None: whole, a base),
    ``before`` the rows' owners until then (:func:`owners_before`). ``models``: the slot's
    copies; a mapping whose ``slot_ids`` is the very tensor an earlier copy's mapping reads
    (the slot holds row-sparse buffers once) takes that lookup instead of making its own, so
    a delta's lookup update and the compaction it may trigger (O(capacity)) run once."""
    updated: dict[str, DynamicMapping] = {}
    for model in models:  # a base re-sorts: no copy keeps the old lookup through the sort
        for name, mapping in dynamic_mappings(model).items():
            if name in written and written[name] is None:
                mapping.forget_lookup()
    for model in models:
        for name, mapping in dynamic_mappings(model).items():
            if name not in written:
                continue
            done = updated.get(name)
            if done is not None and done.slot_ids is mapping.slot_ids:
                mapping.share_lookup(done)
                continue
            rows = written[name]
            if rows is None or name not in before:
                mapping.rebuild()
            else:
                mapping.refresh(rows.cpu(), before[name])
            updated.setdefault(name, mapping)
