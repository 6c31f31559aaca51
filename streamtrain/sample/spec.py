"""What a valid sample looks like for the configured model: feature shape and label kind."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from streamtrain.config import ModelSettings

Task = Literal["multiclass", "binary", "regression"]


@dataclass(frozen=True)
class SparseFeature:
    """A named list of IDs a sample may carry beside its dense features.

    ``table`` names the embedding table its IDs are looked up in (features may share one);
    a sample with more than ``max_length`` IDs for it is rejected (``sparse_too_long``).
    """

    name: str
    table: str
    max_length: int = 64

    def __post_init__(self) -> None:
        if not self.name or self.max_length < 1:
            raise ValueError(f"sparse feature {self.name!r} needs a name and max_length >= 1")


@dataclass(frozen=True)
class SampleSpec:
    """The shape contract between producers, ingest, the model and the server.

    >>> spec = SampleSpec(feature_shape=(1, 8, 8), task="multiclass", num_classes=10)
    >>> spec.feature_size, spec.label_width
    (64, 1)
    """

    feature_shape: tuple[int, ...]
    task: Task
    num_classes: int = 2
    target_dim: int = 1
    sparse: tuple[SparseFeature, ...] = ()

    def __post_init__(self) -> None:
        names = [f.name for f in self.sparse]
        if len(set(names)) != len(names):
            raise ValueError(f"sparse feature names {names} must be distinct")
        if not self.feature_shape or any(d < 1 for d in self.feature_shape):
            raise ValueError(f"feature_shape {self.feature_shape} must have positive dims")
        if self.task == "binary" and self.num_classes != 2:
            raise ValueError("a binary task has num_classes=2")
        if self.task == "multiclass" and self.num_classes < 2:
            raise ValueError("a multiclass task needs num_classes >= 2")

    @property
    def feature_size(self) -> int:
        return math.prod(self.feature_shape)

    @property
    def is_classification(self) -> bool:
        return self.task != "regression"

    @property
    def label_width(self) -> int:
        """Values per label: 1 class index, or target_dim floats for regression."""
        return self.target_dim if self.task == "regression" else 1

    @property
    def sparse_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.sparse)


def spec_for_model(model: ModelSettings) -> SampleSpec:
    """The sample contract the configured model implies (binary tasks always have 2 classes)."""
    num_classes = 2 if model.task == "binary" else model.num_classes
    sparse = tuple(SparseFeature(f.name, f.table or f.name, f.max_length) for f in model.sparse)
    return SampleSpec(model.input_shape, model.task, num_classes, model.target_dim, sparse)
