"""`streamtrain train`: build the trainer from settings and run it until stopped."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import torch
import typer

from streamtrain import metrics
from streamtrain.broker import create_topics
from streamtrain.checkpoint import CheckpointStore
from streamtrain.cli.app import app
from streamtrain.cli.common import CONFIG_OPTION, fail, settings_from, setup_logging
from streamtrain.config import Settings
from streamtrain.devices import resolve_device
from streamtrain.ingest.source import KafkaSampleSource
from streamtrain.kafka_options import kafka_client_options
from streamtrain.snapshot.manifest import settings_hash
from streamtrain.snapshot.publisher import SnapshotPublisher
from streamtrain.spec import SampleSpec
from streamtrain.train.learner import Learner
from streamtrain.train.loop import StopConditions, Trainer, TrainSummary
from streamtrain.train.models import build_model
from streamtrain.train.optim import build_optimizer, build_scheduler
from streamtrain.train.policy import EveryPolicy
from streamtrain.train.task import TaskHead

log = logging.getLogger("streamtrain.train")

_AUTOCAST = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def sample_spec(settings: Settings) -> SampleSpec:
    model = settings.model
    return SampleSpec(
        feature_shape=model.input_shape,
        task=model.task,
        num_classes=2 if model.task == "binary" else model.num_classes,
        target_dim=model.target_dim,
    )


def build_trainer(settings: Settings) -> Trainer:
    """Every object the trainer needs, from the settings tree; nothing below sees settings."""
    train, model_cfg, opt = settings.train, settings.model, settings.optimizer
    device = resolve_device(train.device)
    if train.autocast != "off" and device.type != "cuda":
        raise ValueError(f"train.autocast={train.autocast} needs a CUDA device (got {device})")
    torch.manual_seed(train.seed)
    spec = sample_spec(settings)
    model = build_model(model_cfg.name, spec, model_cfg.params).to(device)
    optimizer = build_optimizer(
        model.parameters(),
        opt.name,
        lr=opt.lr,
        momentum=opt.momentum,
        weight_decay=opt.weight_decay,
    )
    scheduler = build_scheduler(optimizer, opt.schedule, opt.schedule_steps, opt.warmup_steps)
    learner = Learner(
        model,
        TaskHead(spec, model_cfg.loss),
        optimizer,
        scheduler,
        clip_grad_norm=opt.clip_grad_norm,
        max_bad_steps=train.max_bad_steps,
        autocast_dtype=_AUTOCAST[train.autocast],
        device=device,
    )
    client = kafka_client_options(settings.kafka)
    topics = settings.topics
    source = KafkaSampleSource(
        spec=spec,
        topic=topics.samples,
        group_id=settings.ingest.group_id,
        client_options=client,
        partitions=settings.ingest.partitions,
        start_from=settings.ingest.start_from,
        max_batch_size=settings.ingest.max_batch_size,
        max_wait_ms=settings.ingest.max_wait_ms,
        max_record_bytes=settings.ingest.max_record_bytes,
        dead_letter_topic=topics.dead_letter,
        fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms,
    )
    model_settings = model_cfg.model_dump(mode="json")
    publisher = SnapshotPublisher(
        client_options=client,
        topic=topics.snapshots,
        model_name=model_cfg.name,
        settings_hash=settings_hash(model_settings),
    )
    return Trainer(
        source=source,
        learner=learner,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        checkpoints=CheckpointStore(train.checkpoint_dir, keep=train.keep_checkpoints),
        snapshot_sink=publisher,
        device=device,
        model_settings=model_settings,
        snapshot_policy=EveryPolicy(train.snapshot_every_steps, train.snapshot_every_seconds),
        checkpoint_policy=EveryPolicy(train.checkpoint_every_steps, train.checkpoint_every_seconds),
        metric_window=train.metric_window,
        regression=spec.task == "regression",
        prefetch_depth=settings.ingest.prefetch_batches,
        stop=StopConditions(train.max_samples, train.stop_when_idle),
    )


@app.command()
def train(
    config: Path | None = CONFIG_OPTION,
    bootstrap_servers: str | None = typer.Option(None, help="Kafka host:port list."),
    device: str | None = typer.Option(None, help="auto | cpu | cuda[:N]."),
    checkpoint_dir: Path | None = typer.Option(None, help="Where checkpoints are kept."),
    metrics_port: int | None = typer.Option(None, help="Port of /metrics (0 = any free)."),
    max_samples: int | None = typer.Option(None, help="Stop after learning this many samples."),
    stop_when_idle: float | None = typer.Option(
        None, help="Stop after this many seconds without input."
    ),
    create_missing_topics: bool = typer.Option(
        True, help="Create the samples, dead-letter and snapshot topics if missing."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Consume samples, take gradient steps, publish snapshots, checkpoint; Ctrl-C stops cleanly."""
    setup_logging(verbose)
    settings = settings_from(
        config,
        kafka__bootstrap_servers=bootstrap_servers,
        train__device=device,
        train__checkpoint_dir=checkpoint_dir,
        train__metrics_port=metrics_port,
        train__max_samples=max_samples,
        train__stop_when_idle=stop_when_idle,
    )
    topics = settings.topics
    if create_missing_topics:
        try:
            create_topics(
                settings.kafka.bootstrap_servers,
                [topics.samples],
                settings.topics.sample_partitions,
            )
            create_topics(settings.kafka.bootstrap_servers, [topics.dead_letter, topics.snapshots])
        except Exception as exc:
            fail(f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {exc}", code=1)
    try:
        trainer = build_trainer(settings)
    except ValueError as exc:
        fail(str(exc))
    server = metrics.serve_metrics(metrics.TRAINER_REGISTRY, settings.train.metrics_port)
    typer.echo(f"trainer metrics: http://127.0.0.1:{server.server_port}/metrics")
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: trainer.request_stop())
    summary = trainer.run()
    server.shutdown()
    _print_summary(summary)


def _print_summary(summary: TrainSummary) -> None:
    resumed = (
        f", resumed from step {summary.resumed_from_step}"
        if summary.resumed_from_step is not None
        else ""
    )
    typer.echo(
        f"stopped ({summary.stop_reason}) run {summary.run_id}: {summary.steps} steps, "
        f"{summary.samples_seen} samples in {summary.elapsed_seconds:.1f} s{resumed}; "
        f"rolling loss {summary.rolling_loss:.4f}, score {summary.rolling_score:.4f}"
    )
