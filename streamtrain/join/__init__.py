"""The delayed-label join: logged predictions + labels that arrive later -> training samples.

* :mod:`~streamtrain.join.partition_state`: the join rules of one partition pair, no Kafka.
* :mod:`~streamtrain.join.state_file`: that state on disk (safetensors + JSON, atomic).
* :mod:`~streamtrain.join.samples_log`: the samples topic's ends and what the join emitted.
* :mod:`~streamtrain.join.joiner`: the loop, checkpoints and partition hand-over (the
  exactly-once argument is its docstring).
* settings -> a running join (``streamtrain join``): :mod:`~streamtrain.builders.join`, with
  the other builders.
"""

from streamtrain.join.joiner import Joiner, JoinTopics
from streamtrain.join.partition_state import JoinPolicy, PartitionState

__all__ = ["JoinPolicy", "JoinTopics", "Joiner", "PartitionState"]
