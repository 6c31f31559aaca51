"""What the delayed-labels application did so far, shared with the demo through a JSON file.

The application (:mod:`streamtrain.demo.label_app`) writes it about once a second; the demo
reads it for its live view and summary. A reader never sees a torn file (write, then rename).

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "status.json"
>>> AppStatus(requests=3, served_accuracy=0.5).write(path)
>>> AppStatus.read(path).requests
3
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

ACCURACY_WINDOW = 1000


@dataclass
class AppStatus:
    """What the application did so far; written as JSON for the demo's summary."""

    bootstrap_samples: int = 0
    requests: int = 0
    requests_failed: int = 0
    rows_served: int = 0
    labels_sent: int = 0
    labels_pending: int = 0
    served_accuracy: float | None = None
    """Right answers among the last ``ACCURACY_WINDOW`` served rows whose label arrived."""
    last_error: str | None = None

    def write(self, path: Path) -> None:
        """Atomically: the reader never sees half a file."""
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(asdict(self)))
        os.replace(partial, path)

    @classmethod
    def read(cls, path: Path) -> AppStatus | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None
