"""A JSON-lines file of samples replayed as a stream (``streamtrain produce --file``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from streamtrain.datasets.base import DatasetError, DatasetInfo, SampleChunk, cycle
from streamtrain.sample.spec import SampleSpec


def jsonl(path: Path, spec: SampleSpec) -> DatasetInfo:
    """Replay a JSON-lines file of samples (the JSON wire format, one per line), validated
    against ``spec`` up front; cycles when asked for more samples than it holds.

    Raises:
        DatasetError: the file cannot be read, or a line is not a valid sample for ``spec``.
    """
    from streamtrain.wire import decode_json

    try:
        lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from exc
    decoded = decode_json(spec, lines, np.full(len(lines), np.nan))
    if decoded.rejects:
        shown = [f"  line {i + 1}: {r}" for i, r in sorted(decoded.rejects.items())[:5]]
        more = len(decoded.rejects) - len(shown)
        raise DatasetError(
            f"{path}: {len(decoded.rejects)} of {len(lines)} lines are not valid samples for "
            f"feature shape {list(spec.feature_shape)}, task {spec.task}:\n"
            + "\n".join(shown)
            + (f"\n  ... and {more} more" if more else "")
        )

    def generate(count: int, seed: int, chunk_size: int) -> Iterator[SampleChunk]:
        yield from cycle(
            decoded.features,
            decoded.labels,
            decoded.weights,
            decoded.timestamps,
            count,
            seed,
            chunk_size,
            shuffle=False,
        )

    return DatasetInfo(
        name="file",
        description=f"replay of {path} ({len(lines)} samples)",
        spec=spec,
        generate=generate,
    )
