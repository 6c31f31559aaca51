"""Hashed embedding tables that learn sparsely: the sparse half of ``dlrm`` and ``fm``.

Each table named in ``model.sparse`` is one ``nn.EmbeddingBag(rows, dim, sparse=True)``. An ID
(any int64; strings were hashed on the wire) maps to a row by :func:`hash_rows`, a SplitMix64
finaliser mod ``rows``, so consecutive or adversarially-spaced IDs spread evenly and a table
of fixed size takes any number of distinct IDs (with collisions: docs/models.md gives the
measured rate). The measured share of IDs that share a row with another is 1 - exp(-IDs/rows)
(22% at rows = 4x the distinct IDs, 63% at rows = IDs; the table in docs/models.md), and under
Zipf popularity most traffic is on IDs that rarely share.

A table of kind ``dynamic`` (``tables: {name: {kind: dynamic, capacity: ...}}``) gives each
admitted ID its own row instead (:mod:`.dynamic_table`): ``capacity`` owned rows followed by
``fallback_rows`` hashed rows for IDs not admitted. Its shape stays fixed, as a hashed table's,
so checkpoints, snapshots, delta rows and the serving slot need no resize protocol. Before each
training step :meth:`EmbeddingTables.observe` admits and evicts, and re-initialises the rows it
hands to new owners; it remembers which rows and mapping entries changed until the row tracker
drains them into the next delta.

Gradients of the tables are sparse COO tensors over the rows of the batch, so a step reads
and writes only those rows with a row-wise optimizer (Adagrad, or SGD without momentum).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

from streamtrain.sample.sparse_torch import JaggedTensor, SparseInput
from streamtrain.sample.spec import SparseFeature
from streamtrain.train.models.dynamic_changed import ChangedRows
from streamtrain.train.models.dynamic_table import DynamicMapping, Observed
from streamtrain.train.models.dynamic_watch import Watch
from streamtrain.train.models.row_layout import RowLookup, ShardLayout
from streamtrain.train.models.sparse_params import TableSettings, checked_tables
from streamtrain.train.row_tracker import RowsChanging

Pooling = Literal["sum", "mean"]
_KEPT_DRAW_ROWS = 8192  # the reset rows' draw buffer is kept up to this size (_reset_rows)
_MIX1 = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
_MIX2 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX3 = -7723592293110705685  # 0x94D049BB133111EB


def hash_rows(ids: torch.Tensor, rows: int) -> torch.Tensor:
    """Rows in ``[0, rows)`` of int64 ``ids``: SplitMix64's finaliser (64-bit wrap-around
    products, logical shifts emulated by masks), then the non-negative remainder.

    >>> hash_rows(torch.tensor([0, 1, 2, -1]), 10).tolist() == hash_rows(
    ...     torch.tensor([0, 1, 2, -1]), 10).tolist()
    True
    """
    z = ids * _MIX1
    z = (z ^ ((z >> 30) & ((1 << 34) - 1))) * _MIX2
    z = (z ^ ((z >> 27) & ((1 << 37) - 1))) * _MIX3
    z = z ^ ((z >> 31) & ((1 << 33) - 1))
    return torch.remainder(z, rows)


class EmbeddingTables(nn.Module):
    """The tables of ``features`` (``rows`` each unless ``table_rows`` says otherwise) and the
    per-feature pooling: ``sum`` or ``mean`` of the weighted rows of a sample's IDs (a mean
    divides by the sum of the ID weights; a sample without IDs pools to zeros).

    >>> from streamtrain.sample.spec import SparseFeature
    >>> tables = EmbeddingTables([SparseFeature("items", "items")], dim=4, rows=100)
    >>> x = {"items": JaggedTensor.from_lists([[1, 2], [], [3]])}
    >>> tables.pooled(x)["items"].shape
    torch.Size([3, 4])
    """

    def __init__(
        self,
        features: Sequence[SparseFeature],
        dim: int,
        rows: int,
        table_rows: Mapping[str, int] | None = None,
        pooling: Mapping[str, Pooling] | None = None,
        init_std: float = 0.01,
        kinds: Mapping[str, TableSettings] | None = None,
    ) -> None:
        super().__init__()
        if not features:
            raise ValueError(
                "this model embeds sparse ID features: declare them in model.sparse, e.g. "
                "[{name: user, table: users}] (docs/models.md)"
            )
        table_rows = dict(table_rows or {})
        pooling = dict(pooling or {})
        self.features = list(features)
        tables = checked_tables(features, table_rows, pooling, kinds or {})
        dynamic = {t: k for t, k in (kinds or {}).items() if k.kind == "dynamic"}
        self.pooling = {f.name: pooling.get(f.name, "mean") for f in features}
        self.rows = {t: table_rows.get(t, rows) for t in sorted(tables)}
        for t, k in dynamic.items():
            self.rows[t] = k.capacity + k.fallback_rows
        # a row_wise table on rank r of n holds only its share of the rows (row_layout.py);
        # self.rows keeps the global size, which the IDs hash onto
        self.layout = ShardLayout.current()
        row_wise = {t for t, k in (kinds or {}).items() if k.sharding == "row_wise"}
        self.sharded = row_wise if self.layout.sharded else set()
        self.exchange: RowLookup | None = None  # attached by the distributed trainer
        # "t_" keeps a table called e.g. "items" clear of ModuleDict's own attributes
        self.tables = nn.ModuleDict(
            {
                _key(t): nn.EmbeddingBag(
                    self.layout.local_rows(n) if t in self.sharded else n,
                    dim,
                    mode="sum",
                    sparse=True,
                )
                for t, n in self.rows.items()
            }
        )
        self._bags = {t: cast(nn.EmbeddingBag, self.tables[_key(t)]) for t in self.rows}
        for weight in self._weights():
            nn.init.normal_(weight, std=init_std)
        self.dim = dim
        self.init_std = init_std
        self.mappings = nn.ModuleDict({_key(t): DynamicMapping(k) for t, k in dynamic.items()})
        # by table name, built once: read several times a step (a plain dict of the same
        # modules, so it follows them through deepcopy and load_state_dict)
        self._dynamic = {t: cast(DynamicMapping, self.mappings[_key(t)]) for t in dynamic}
        self._dynamic_features = {t: [f.name for f in features if f.table == t] for t in dynamic}
        # the state names a step marks, by table (formatted once, not per step)
        self._mark_names = {t: _mark_names(t) for t in dynamic}
        # rows changed outside optimizer steps since the row tracker last drained them
        self._dirty = ChangedRows()
        self._generator = torch.Generator()  # re-seeded for every reset (see observe)
        self._changing: RowsChanging | None = None  # see watch_rows
        self._draws = _no_draws()  # the reset rows' draw buffer and its view (_reset_rows)
        self._host_weights: dict[int, tuple[torch.Tensor, int, npt.NDArray[np.float32]]] = {}

    def __getstate__(self) -> dict[str, object]:
        """A copy (``copy.deepcopy``: the serving slot's second copy) starts without the host
        caches, which would copy whole weights; they are made again when needed."""
        state = self.__dict__.copy()
        state["_host_weights"], state["_draws"] = {}, _no_draws()
        return state

    @property
    def row_sparse_parameters(self) -> list[str]:
        return [f"tables.{key}.weight" for key in self.tables]

    @property
    def sharded_weights(self) -> list[nn.Parameter]:
        """The weights of the tables this rank holds a row-wise shard of."""
        return [cast(nn.Parameter, self._weight(t)) for t in sorted(self.sharded)]

    @property
    def sharded_rows(self) -> dict[str, int]:
        """The sharded weights' state names below this module, with the global row count."""
        return {f"tables.{_key(t)}.weight": self.rows[t] for t in sorted(self.sharded)}

    def _sharded_lookups(self, sparse: SparseInput) -> dict[str, torch.Tensor]:
        """Each sharded feature's rows ``[nnz, dim]`` (by feature name), read from their
        owners in one exchange for all of them (``row_exchange.py``)."""
        features = [f for f in self.features if f.table in self.sharded]
        if not features:
            return {}
        if self.exchange is None:
            raise RuntimeError(
                f"table {features[0].table!r} is sharded row_wise over {self.layout.world} "
                "ranks: its rows are read through the distributed trainer's row exchange, which "
                "is not attached"
            )
        requests = [(self._weight(f.table), self._rows(f, sparse[f.name])) for f in features]
        values = self.exchange.lookup_many(requests)
        return {f.name: v for f, v in zip(features, values, strict=True)}

    def _weight(self, table: str) -> torch.Tensor:
        # the parameters' dict of a bag from a plain dict: ``self.tables[...]`` and ``.weight``
        # each go through ``nn.Module.__getattr__`` (a microsecond apiece, several a step)
        weight = self._bags[table]._parameters["weight"]
        assert weight is not None
        return weight

    def _weights(self) -> list[torch.Tensor]:
        return [self._weight(t) for t in self.rows]

    def _rows(self, feature: SparseFeature, x: JaggedTensor) -> torch.Tensor:
        mapping = self._dynamic.get(feature.table)  # a plain dict: no ModuleDict lookups
        if mapping is not None:
            return mapping.rows(x.ids)
        return hash_rows(x.ids, self.rows[feature.table])

    # --- dynamic tables ---------------------------------------------------------------------
    @property
    def dynamic(self) -> dict[str, DynamicMapping]:
        """The dynamic tables' mappings by table name."""
        return self._dynamic

    @property
    def row_sparse_buffers(self) -> list[str]:
        return [
            f"mappings.{_key(t)}.{name}"
            for t, m in self.dynamic.items()
            for name in m.row_sparse_buffers
        ]

    def watch_rows(self, changing: RowsChanging | None) -> None:
        """Row tracker rule 6: ``changing`` hears of the rows :meth:`observe` will write (weights
        re-drawn, mapping rows) first, so a snapshot copy saves them (``copy_classes.py``)."""
        self._changing = changing
        for table, mapping in self._dynamic.items():
            mapping.watch = Watch(changing, f"mappings.{_key(table)}.")

    def observe(
        self,
        sparse: SparseInput,
        gather: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None,
    ) -> list[tuple[str, torch.Tensor, Observed]]:
        """One training step's admissions and evictions in every dynamic table, before the
        forward; ``gather`` (a distributed rank) turns each table's IDs into the union
        batch's, so every rank decides alike. Rows handed to a new owner are re-initialised
        (normal, ``init_std``, from a generator seeded by the table's seed and step); returns
        per table its weight and what was done (the caller resets optimizer rows)."""
        tables = self.dynamic
        ids = []
        for table, names in self._dynamic_features.items():
            parts = [sparse[name].ids for name in names if name in sparse]
            if len(parts) == 1:
                ids.append(parts[0])
                continue
            device = self._weight(table).device
            ids.append(
                torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64, device=device)
            )
        if gather is not None:
            ids = gather(ids)
        # every table's decisions first, then the resets: the decisions' numpy code runs back
        # to back, before the draws' torch code takes the caches
        steps = [mapping.observe(i) for mapping, i in zip(tables.values(), ids, strict=True)]
        done = []
        for number, ((table, mapping), observed) in enumerate(
            zip(tables.items(), steps, strict=True)
        ):
            weight = self._weight(table)
            weight_name, slots_name, cells_name = self._mark_names[table]
            if observed.placed.size:
                if self._changing is not None:
                    self._changing(weight_name, observed.placed)
                self._reset_rows(weight, mapping.settings.seed, number, observed)
                self._mark(weight_name, weight.shape[0], observed.placed)
            # slot_ids, last_seen and use_count change on the same rows: one mask for three
            self._mark(slots_name, mapping.capacity, observed.changed_slots)
            if observed.changed_cells.size:
                self._mark(cells_name, mapping.settings.cells, observed.changed_cells)
            done.append((table, weight, observed))
        return done

    def _reset_rows(self, weight: torch.Tensor, seed: int, number: int, observed: Observed) -> None:
        """Re-draw the rows ``observed`` handed to new owners: a fixed function of (seed, step,
        table), so replays and ranks draw the same rows and two tables resetting in one step
        draw different ones; ``normal_`` with the std draws the bits ``randn(...) * std``
        does, in one operation less."""
        step = observed.step
        seed = ((seed * 1_000_003 + step) * 64 + number) % (1 << 63)
        generator = self._generator.manual_seed(seed)
        n = observed.placed.size
        host = self._host_weight(weight)
        if host is not None:
            # through numpy views: no autograd mode to enter, no index dispatch (the forward
            # that reads the rows comes after, so no saved tensor's version is bypassed); the
            # draw lands in a reused buffer (normal_ fills a contiguous block alike, fresh or
            # not), the weight's view is kept while the weight stays
            draws, draws_host = self._draws
            if draws.shape[0] < n:
                draws = torch.empty(max(n, 2 * draws.shape[0]), self.dim)
                draws_host = draws.numpy()
                if n <= _KEPT_DRAW_ROWS:  # a rare huge reset (a table filled at once) is not
                    self._draws = draws, draws_host  # kept: it pinned a whole table's bytes
            draws[:n].normal_(0.0, self.init_std, generator=generator)
            host[observed.placed] = draws_host[:n]
            return
        fresh = torch.empty(n, self.dim).normal_(0.0, self.init_std, generator=generator)
        # on the host through ``.data``: the version stays, as on the numpy path (rule 6)
        with torch.no_grad():
            target = weight.data if weight.is_cpu else weight
            target[observed.reset.to(weight.device)] = fresh.to(weight)

    def _host_weight(self, weight: torch.Tensor) -> npt.NDArray[np.float32] | None:
        """A numpy view of a float32 host ``weight`` (None: another device or dtype), kept
        while ``weight`` and its memory stay (a load writes in place; the view keeps the
        memory it reads alive, so no other tensor can take its address)."""
        kept = self._host_weights.get(id(weight))
        address = weight.data_ptr()
        if kept is not None and kept[0] is weight and kept[1] == address:
            return kept[2]
        if not weight.is_cpu or weight.dtype != torch.float32:
            return None
        host = weight.detach().numpy()
        self._host_weights[id(weight)] = (weight, address, host)
        return host

    @property
    def _weights_by_state(self) -> dict[str, torch.Tensor]:
        return {f"tables.{_key(t)}.weight": self._weight(t) for t in self.rows}

    def _mark(self, name: str, size: int, rows: npt.NDArray[np.int64]) -> None:
        # on the host (numpy: a step's marks cost less than torch's dispatch), like the mapping
        self._dirty.mark(name, size, rows)

    def drain_changed_rows(self) -> dict[str, torch.Tensor]:
        """Rows of weights (reset) and mapping buffers changed since the last call, by state
        name below this module; the row tracker adds them to the next delta. Called at a
        snapshot point: it costs the rows marked, not the table (``dynamic_changed.py``)."""
        out = {}
        for name, changed in self._dirty.take().items():
            rows = torch.from_numpy(changed)
            if name.endswith(".weight"):  # beside the optimizer's touched rows, on its device
                out[name] = rows.to(self._weights_by_state[name].device)
            elif name.endswith(".filter_counts"):  # mapping buffers stay in host memory
                out[name] = rows
            else:  # one mask stands for the three slot buffers
                for buffer in ("slot_ids", "last_seen", "use_count"):
                    out[f"{name}.{buffer}"] = rows
        return out

    def pooled(self, sparse: SparseInput) -> dict[str, torch.Tensor]:
        """Per feature, the pooled rows of each sample ``[n, dim]``."""
        out = {}
        fetched = self._sharded_lookups(sparse)
        for feature in self.features:
            x = sparse[feature.name]
            if feature.table in self.sharded:
                # each ID's row, fetched from its owner, pooled here as the table would
                values = fetched[feature.name]
                positions = torch.arange(values.shape[0], device=values.device)
                total = F.embedding_bag(
                    positions, values, x.offsets, mode="sum", per_sample_weights=x.weights
                )
            else:
                bag = self.tables[_key(feature.table)]
                total = bag(self._rows(feature, x), x.offsets, per_sample_weights=x.weights)
            if self.pooling[feature.name] == "mean":
                denom = torch.zeros(x.size, device=x.weights.device, dtype=x.weights.dtype)
                denom.index_add_(0, x.bag_index(), x.weights)
                total = total / denom.clamp_min(1e-12).unsqueeze(1)
            out[feature.name] = total
        return out

    def per_id(self, sparse: SparseInput) -> list[tuple[torch.Tensor, torch.Tensor, JaggedTensor]]:
        """Per feature, each ID's row ``[nnz, dim]`` (a sparse-gradient lookup), the sample it
        belongs to ``[nnz]``, and the feature's input."""
        out = []
        fetched = self._sharded_lookups(sparse)
        for feature in self.features:
            x = sparse[feature.name]
            if feature.table in self.sharded:
                rows = fetched[feature.name]
            else:
                rows = F.embedding(self._rows(feature, x), self._weight(feature.table), sparse=True)
            out.append((rows, x.bag_index(), x))
        return out


def _no_draws() -> tuple[torch.Tensor, npt.NDArray[np.float32]]:
    draws = torch.empty(0, 0)
    return draws, draws.numpy()


def _key(table: str) -> str:
    return "t_" + table


def _mark_names(table: str) -> tuple[str, str, str]:
    """The state names a dynamic table's step marks: weight, slot buffers, filter cells."""
    return (
        f"tables.{_key(table)}.weight",
        f"mappings.{_key(table)}",
        f"mappings.{_key(table)}.filter_counts",
    )
