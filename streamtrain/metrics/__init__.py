"""Every Prometheus metric streamtrain exports, defined once (one module per process kind).

Three registries keep each process's ``/metrics`` to what it does: ``TRAINER_REGISTRY`` (ingest,
training, checkpoints, snapshot publishing), ``SERVER_REGISTRY`` (serving) and ``JOIN_REGISTRY``
(the delayed-label join). Names carry the
``streamtrain_`` prefix and their unit; ``docs/metrics.md`` explains each one.
"""

from streamtrain.metrics.http import *  # noqa: F403
from streamtrain.metrics.join import *  # noqa: F403
from streamtrain.metrics.process import *  # noqa: F403
from streamtrain.metrics.quality import *  # noqa: F403
from streamtrain.metrics.registries import *  # noqa: F403
from streamtrain.metrics.server import *  # noqa: F403
from streamtrain.metrics.tables import *  # noqa: F403
from streamtrain.metrics.trainer import *  # noqa: F403
