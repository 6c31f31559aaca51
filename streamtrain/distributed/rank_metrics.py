"""Every metric of a trainer rank carries ``rank="<r>"``: one dashboard query per rank.

The metrics are defined once, unlabelled, for the single-process trainer (``streamtrain.metrics``);
a rank serves them through :class:`RankLabelled`, which adds the label at scrape time rather
than threading a label through every metric's definition and use.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry


class RankLabelled(Collector):
    """The samples of ``registry`` with ``rank`` added to their labels.

    >>> from prometheus_client import Counter, generate_latest
    >>> inner = CollectorRegistry()
    >>> Counter("steps", "Steps.", registry=inner).inc(3)
    >>> b'steps_total{rank="1"} 3.0' in generate_latest(rank_registry(inner, 1))
    True
    """

    def __init__(self, registry: CollectorRegistry, rank: int) -> None:
        self._registry = registry
        self._rank = str(rank)

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                labelled.add_sample(
                    sample.name,
                    {**sample.labels, "rank": self._rank},
                    sample.value,
                    sample.timestamp,
                    sample.exemplar,
                )
            yield labelled


def rank_registry(registry: CollectorRegistry, rank: int) -> CollectorRegistry:
    """A registry to serve in place of ``registry`` on rank ``rank``."""
    labelled = CollectorRegistry(auto_describe=False)
    labelled.register(RankLabelled(registry, rank))
    return labelled
