"""Turn the settings tree into a ready Trainer: the only place training objects meet settings."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch

from streamtrain.checkpoint import CheckpointStore
from streamtrain.config import Settings
from streamtrain.devices import resolve_device, training_threads
from streamtrain.distributed.group import RankGroup
from streamtrain.distributed.launch import rank_consumer
from streamtrain.distributed.lockstep import LockstepTrainer
from streamtrain.distributed.shard_snapshot import sharded_names
from streamtrain.ingest.options import SourceOptions
from streamtrain.ingest.source import KafkaSampleSource
from streamtrain.kafka import KafkaConnection
from streamtrain.sample.spec import SampleSpec, spec_for_model
from streamtrain.snapshot.manifest import settings_hash
from streamtrain.snapshot.publisher import SnapshotPublisher
from streamtrain.snapshot.signing import ManifestSigner
from streamtrain.snapshot.versions import newest_version
from streamtrain.snapshot.writer import ShardSpec
from streamtrain.train.cadence import EveryPolicy
from streamtrain.train.learner import Learner
from streamtrain.train.loop import Trainer
from streamtrain.train.models import build_model
from streamtrain.train.optim import (
    build_optimizer,
    build_scheduler,
    param_groups,
    step_lr_scales,
)
from streamtrain.train.progress import StopConditions
from streamtrain.train.promotion_gate import PromotionGate
from streamtrain.train.row_tracker import RowTracker
from streamtrain.train.task import TaskHead

_AUTOCAST = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_trainer(settings: Settings) -> Trainer:
    """Every object the trainer needs, from the settings tree; nothing below sees settings."""
    train, model_cfg = settings.train, settings.model
    device, group = _device_and_group(settings)
    spec = spec_for_model(model_cfg)
    learner = _learner(settings, spec, device)
    # Read before any Kafka client exists: a bad key file fails the start with its own message.
    signer = ManifestSigner.from_file(train.signing_key) if train.signing_key else None
    kafka = KafkaConnection.from_settings(settings.kafka)
    topics = settings.topics
    source, every_partition = _source(settings, spec, kafka, group)
    model_settings = model_cfg.model_dump(mode="json")
    publisher = _publisher(settings, kafka, signer, group, learner)
    make: Callable[..., Trainer] = Trainer
    if group is not None:
        make = functools.partial(LockstepTrainer, group=group, all_partitions=every_partition)
    return make(
        source=source,
        learner=learner,
        checkpoints=CheckpointStore(train.checkpoint_dir, keep=train.keep_checkpoints),
        snapshot_sink=publisher,
        row_tracker=(
            RowTracker(
                learner.model,
                learner.optimizer,
                base_every_deltas=train.base_every_deltas,
                base_every_seconds=train.base_every_seconds,
            )
            if train.delta_snapshots
            else None
        ),
        model_settings=model_settings,
        snapshot_policy=EveryPolicy(train.snapshot_every_steps, train.snapshot_every_seconds),
        checkpoint_policy=EveryPolicy(train.checkpoint_every_steps, train.checkpoint_every_seconds),
        metric_window=train.metric_window,
        prefetch_depth=settings.ingest.prefetch_batches,
        stop=StopConditions(train.max_samples, train.stop_when_idle),
        first_version=lambda: newest_version(
            kafka, topics.snapshots, settings_hash(model_settings)
        ),
        promotion_gate=(
            PromotionGate(train.promotion_tolerance, train.drift_detector)
            if train.promotion_tolerance is not None or train.drift_detector is not None
            else None
        ),
    )


def _publisher(
    settings: Settings,
    kafka: KafkaConnection,
    signer: ManifestSigner | None,
    group: RankGroup | None,
    learner: Learner,
) -> SnapshotPublisher | None:
    """Rank 0 alone publishes replicated weights (the same on every rank after each step);
    with row-wise tables every rank publishes its shard (distributed/shard_snapshot.py)."""
    tables = sharded_names(learner.model) if group is not None else {}
    if group is not None and not group.is_leader and not tables:
        return None
    return SnapshotPublisher(
        kafka=kafka,
        topic=settings.topics.snapshots,
        model_name=settings.model.name,
        settings_hash=settings_hash(settings.model.model_dump(mode="json")),
        signer=signer,
        shard=ShardSpec(group.rank, group.world_size, tables) if group and tables else None,
    )


def _device_and_group(settings: Settings) -> tuple[torch.device, RankGroup | None]:
    """The device this process trains on, and its rank group (None unless launched by
    torchrun with world > 1); autocast without CUDA is refused here, before any build."""
    train = settings.train
    device = resolve_device(train.device)
    if train.autocast != "off" and device.type != "cuda":
        raise ValueError(f"train.autocast={train.autocast} needs a CUDA device (got {device})")
    group = RankGroup.from_environment(device)
    if group is not None and device.type == "cuda":
        device = torch.device("cuda", group.local_rank)  # one GPU per rank
    return device, group


def _learner(settings: Settings, spec: SampleSpec, device: torch.device) -> Learner:
    """Model, optimizer, schedule and task head on ``device``. Threads and seed are set first:
    the model's initial weights must come from the seeded generator."""
    train, model_cfg, opt = settings.train, settings.model, settings.optimizer
    torch.set_num_threads(train.torch_threads or training_threads())
    torch.manual_seed(train.seed)
    model = build_model(model_cfg.name, spec, model_cfg.params).to(device)
    optimizer = build_optimizer(
        param_groups(model, opt.name),
        opt.name,
        lr=opt.lr,
        momentum=opt.momentum,
        weight_decay=opt.weight_decay,
    )
    scheduler = build_scheduler(optimizer, opt.schedule, opt.schedule_steps, opt.warmup_steps)
    return Learner(
        model,
        TaskHead(spec, model_cfg.loss),
        optimizer,
        scheduler,
        clip_grad_norm=opt.clip_grad_norm,
        max_bad_steps=train.max_bad_steps,
        autocast_dtype=_AUTOCAST[train.autocast],
        device=device,
        step_samples=opt.step_samples,
        step_lr_scales=step_lr_scales(model, opt.name, opt.step_samples),
    )


def _source(
    settings: Settings, spec: SampleSpec, kafka: KafkaConnection, group: RankGroup | None
) -> tuple[KafkaSampleSource, tuple[int, ...]]:
    """The sample source, and every partition of the job (empty without a rank group): with a
    group, each rank's consumer reads its share of the partitions the job reads."""
    ingest, topics = settings.ingest, settings.topics
    options = SourceOptions.from_settings(settings)
    consumer = None
    every_partition: tuple[int, ...] = ()
    if group is not None:
        consumer, every_partition, partitions = rank_consumer(
            kafka,
            topic=topics.samples,
            group_id=ingest.group_id,
            fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms,
            wanted=ingest.partitions,
            group=group,
        )
        options = dataclasses.replace(options, partitions=partitions)
    source = KafkaSampleSource(
        spec=spec,
        topic=topics.samples,
        group_id=ingest.group_id,
        kafka=kafka,
        options=options,
        consumer=consumer,
    )
    return source, every_partition
