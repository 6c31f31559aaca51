"""``ctr``: a synthetic click stream for sparse-ID models (users x items, Zipf popularity).

Each sample is one impression: a user ID, an item ID (sparse features ``user`` and ``item``),
``dims`` dense context features and a click label drawn from a latent-factor ground truth,
``P(click) = sigmoid(bias + item_bias + scale * <u_user, v_item> + w . context)``.
User and item popularity follow Zipf laws (exponent ``zipf``), so a few IDs carry most
impressions and most IDs are rare. The stream moves: a new item appears every
``new_item_every`` samples among the most popular ranks (fresh content is shown a lot), and
every ``shift_every`` samples a tenth of the popular ranks trade places (tastes shift).
The number of users and items sets the table-size pressure: with a model of ``rows`` rows per
table, ``users / rows`` IDs share each row (IDs >> rows under pressure).

>>> info = ctr(users=1000, items=500)
>>> chunk = next(info.iterate(count=4, seed=0))
>>> chunk.features.shape, chunk.sparse.features["item"].lengths.tolist()
((4, 4), [1, 1, 1, 1])
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from streamtrain.datasets.base import DatasetError, DatasetInfo, SampleChunk
from streamtrain.sample.sparse_numpy import Jagged, SparseRows
from streamtrain.sample.spec import SampleSpec, SparseFeature

_FACTORS = 8
_HOT_RANKS = 1000  # where new items enter and where popularity shifts


def ctr_spec(dims: int = 4) -> SampleSpec:
    """The spec of the ctr stream: binary clicks, ``dims`` dense features, user and item IDs."""
    return SampleSpec(
        (dims,),
        "binary",
        sparse=(SparseFeature("user", "users", 1), SparseFeature("item", "items", 1)),
    )


def _zipf_cdf(n: int, exponent: float) -> npt.NDArray[np.float64]:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    cdf: npt.NDArray[np.float64] = np.cumsum(weights) / weights.sum()
    return cdf


def ctr(
    users: int = 100_000,
    items: int = 20_000,
    dims: int = 4,
    zipf: float = 1.1,
    new_item_every: int = 50,
    shift_every: int = 20_000,
    scale: float = 3.0,
) -> DatasetInfo:
    """The ctr stream (module doc). IDs are spread over int64 (``id * 1_000_003 + 17``) so a
    model cannot index a table by the raw ID."""
    if users < 1 or items < 1 or dims < 1 or zipf <= 0 or new_item_every < 1 or shift_every < 1:
        raise DatasetError(
            "ctr needs users, items, dims, new_item_every and shift_every >= 1 and zipf > 0"
        )
    spec = ctr_spec(dims)

    def generate(count: int, seed: int, chunk_size: int) -> Iterator[SampleChunk]:
        truth = np.random.default_rng(seed)
        total_items = items + count // new_item_every + 1
        user_f = truth.normal(size=(users, _FACTORS)) / np.sqrt(_FACTORS)
        item_f = truth.normal(size=(total_items, _FACTORS)) / np.sqrt(_FACTORS)
        item_bias = truth.normal(scale=0.5, size=total_items)
        w = truth.normal(scale=0.5, size=dims)
        user_cdf = _zipf_cdf(users, zipf)
        user_of_rank = truth.permutation(users)
        rank_to_item = list(truth.permutation(items))
        next_item = items
        rng = np.random.default_rng(seed + 1)
        for start in range(0, count, chunk_size):
            n = min(chunk_size, count - start)
            while next_item < min(total_items, items + (start + n) // new_item_every):
                rank_to_item.insert(
                    int(rng.integers(min(_HOT_RANKS, len(rank_to_item)))), next_item
                )
                next_item += 1
            if start // shift_every != (start + n) // shift_every:
                hot = min(_HOT_RANKS, len(rank_to_item))
                moved = rng.choice(hot, size=max(2, hot // 10), replace=False)
                values = [rank_to_item[i] for i in moved]
                for i, v in zip(moved, rng.permutation(values), strict=True):
                    rank_to_item[i] = v
            ranks = np.asarray(rank_to_item)
            u = user_of_rank[np.searchsorted(user_cdf, rng.random(n))]
            item_cdf = _zipf_cdf(len(ranks), zipf)
            it = ranks[np.minimum(np.searchsorted(item_cdf, rng.random(n)), len(ranks) - 1)]
            x = rng.normal(size=(n, dims))
            logit = -1.0 + item_bias[it] + scale * (user_f[u] * item_f[it]).sum(1) + x @ w
            clicks = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
            ones = np.ones(n, np.int32)
            sparse = SparseRows(
                {
                    "user": Jagged(
                        u.astype(np.int64) * 1_000_003 + 17, ones, np.ones(n, np.float32)
                    ),
                    "item": Jagged(
                        it.astype(np.int64) * 1_000_003 + 17, ones, np.ones(n, np.float32)
                    ),
                }
            )
            yield SampleChunk(x.astype(np.float32), clicks, sparse=sparse)

    return DatasetInfo(
        name="ctr",
        description=(
            f"click stream: {users} users x {items}+ items, Zipf {zipf}, a new item every "
            f"{new_item_every} samples, popularity shift every {shift_every}"
        ),
        spec=spec,
        generate=generate,
    )
