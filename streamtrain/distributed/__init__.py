"""Several trainer processes, one model: torch.distributed (torchrun) on top of the trainer.

``group`` joins the process group and splits the topic's partitions across ranks,
``step_sync`` all-reduces each step's gradients and standardisation moments,
``lockstep`` runs the trainer loop with every rank agreeing on every decision.
"""

from streamtrain.distributed.group import RankGroup, assign_partitions

__all__ = ["RankGroup", "assign_partitions"]
