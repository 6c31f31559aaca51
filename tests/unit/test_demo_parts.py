"""The demo's pure parts: its plan, curl example, probe parsing, numbers, summary, run dir."""

from __future__ import annotations

import json
import shlex
import socket
from pathlib import Path

import pytest
from rich.console import Console

from streamtrain.config import load_settings
from streamtrain.demo.dashboard import DemoStats, Prediction, plain_line, render
from streamtrain.demo.lifecycle import DemoError, prepare_run_dir
from streamtrain.demo.plan import DemoPlan, choose_port, curl_command, infer_body
from streamtrain.demo.probe import ProbeError, parse_prediction
from streamtrain.demo.scrape import parse_metrics
from streamtrain.demo.summary import SummaryTracker


def _plan(dataset: str) -> DemoPlan:
    return DemoPlan.build(
        dataset,
        rate=500,
        run_dir=Path("/tmp/r"),
        bootstrap_servers="127.0.0.1:1234",
        server_port=8123,
        trainer_port=9123,
    )


@pytest.mark.parametrize(
    ("dataset", "model", "shape", "classes", "task"),
    [("hyperplane", "mlp", (16,), 2, "binary"), ("digits", "cnn", (1, 8, 8), 10, "multiclass")],
)
def test_model_env_is_valid_settings_matching_the_dataset(
    dataset: str,
    model: str,
    shape: tuple[int, ...],
    classes: int,
    task: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = _plan(dataset)
    for key, value in plan.child_env().items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.model.name == model
    assert settings.model.input_shape == shape
    assert settings.model.num_classes == classes
    assert settings.model.task == task
    assert settings.kafka.bootstrap_servers == "127.0.0.1:1234"
    # Signed end to end: the trainer signs with the run's throwaway key, the server requires it.
    assert settings.train.signing_key == plan.key_dir / "trainer.key"
    assert settings.serve.trusted_keys == (plan.key_dir / "trainer.pub",)
    assert settings.serve.effective_signature_policy == "require"


def test_commands_use_the_plan_ports_and_a_fresh_checkpoint_dir() -> None:
    commands = _plan("hyperplane").commands()
    assert set(commands) == {"server", "trainer", "producer"}
    server, trainer, producer = commands["server"], commands["trainer"], commands["producer"]
    assert server[server.index("--port") + 1] == "8123"
    assert trainer[trainer.index("--metrics-port") + 1] == "9123"
    assert trainer[trainer.index("--checkpoint-dir") + 1] == "/tmp/r/checkpoints"
    assert producer[producer.index("--dataset") + 1] == "hyperplane"
    assert producer[producer.index("--rate") + 1] == "500"


def test_busy_port_falls_back_to_a_free_one() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        port, fell_back = choose_port(taken)
    assert fell_back and port != taken
    free, fell_back = choose_port(port)
    assert (free, fell_back) == (port, False)


def test_curl_command_round_trips_through_a_shell_parser() -> None:
    body = infer_body([0.123456, -1.0, 2.5], (3,))
    argv = shlex.split(curl_command("http://127.0.0.1:8000/v2/models/m/infer", body))
    assert argv[:4] == ["curl", "-s", "-X", "POST"]
    assert argv[4] == "http://127.0.0.1:8000/v2/models/m/infer"
    sent = json.loads(argv[argv.index("-d") + 1])
    assert sent["inputs"][0]["shape"] == [1, 3]
    assert sent["inputs"][0]["data"] == [0.1235, -1.0, 2.5]


def test_parse_prediction_reads_class_and_version() -> None:
    doc = {
        "model_name": "streamtrain",
        "model_version": "42",
        "outputs": [
            {"name": "probabilities", "shape": [1, 2], "datatype": "FP32", "data": [0.2, 0.8]},
            {"name": "predicted_class", "shape": [1], "datatype": "INT64", "data": [1]},
        ],
    }
    assert parse_prediction(doc, label=1) == Prediction(1, 1, "42")
    with pytest.raises(ProbeError, match="predicted_class"):
        parse_prediction({"model_version": "1", "outputs": []}, label=0)


def test_stats_come_from_scraped_families() -> None:
    trainer = parse_metrics(
        "# TYPE streamtrain_train_samples_per_second gauge\n"
        "streamtrain_train_samples_per_second 1500\n"
        "# TYPE streamtrain_train_samples counter\nstreamtrain_train_samples_total 9000\n"
        "# TYPE streamtrain_train_prequential_accuracy_ratio gauge\n"
        "streamtrain_train_prequential_accuracy_ratio 0.75\n"
        "# TYPE streamtrain_train_loss gauge\nstreamtrain_train_loss NaN\n"
        "# TYPE streamtrain_ingest_rejected_records counter\n"
        'streamtrain_ingest_rejected_records_total{reason="bad_shape"} 2\n'
        'streamtrain_ingest_rejected_records_total{reason="oversized"} 1\n'
    )
    server = parse_metrics(
        "# TYPE streamtrain_serve_model_version gauge\nstreamtrain_serve_model_version 0\n"
    )
    stats = DemoStats.from_scrapes(3.0, trainer, server)
    # The gauge never decays when training stops, so the rate is not taken from it.
    assert stats.samples_per_second is None and stats.samples_trained == 9000
    assert stats.accuracy == 0.75
    assert stats.rejected == 3
    assert stats.loss is None  # NaN = nothing measured yet
    assert stats.served_version is None  # 0 means nothing swapped in yet
    assert "samples/s -" in plain_line(stats)
    console = Console(record=True, width=120)
    console.print(render(stats, "demo"))
    assert "prequential accuracy" in console.export_text()


def test_summary_says_when_nothing_improved() -> None:
    tracker = SummaryTracker()
    tracker.observe(DemoStats(accuracy=0.0, samples_trained=0))  # before any sample: ignored
    tracker.observe(DemoStats(accuracy=0.9, samples_trained=10, served_version=5))
    tracker.observe(DemoStats(accuracy=0.8, samples_trained=20, served_version=5))
    assert tracker.first_accuracy == 0.9
    assert not tracker.accuracy_rising and not tracker.versions_advancing
    assert "(not rising)" in tracker.lines()[0]
    assert "(not advancing)" in tracker.lines()[1]


def test_run_dir_with_old_checkpoints_is_refused(tmp_path: Path) -> None:
    fresh = prepare_run_dir(tmp_path / "new")
    assert fresh.is_dir()
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    (tmp_path / "old" / "checkpoints" / "step-1").mkdir()
    with pytest.raises(DemoError, match="earlier run"):
        prepare_run_dir(tmp_path / "old")


def test_exit_codes_are_described_in_words() -> None:
    from streamtrain.demo.lifecycle import describe_exit

    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-9) == "was killed by SIGKILL"


def test_the_demo_stream_drifts_every_twenty_seconds_and_says_so() -> None:
    from streamtrain.demo.drift import MAX_PERIOD, DriftWatch, demo_dataset, drift_period

    assert drift_period(2000) == 40_000
    assert drift_period(1e9) == MAX_PERIOD, "the probe pool holds two periods: bounded"
    info, period = demo_dataset("hyperplane", 2000)
    assert period == 40_000 and "every 40000 samples" in info.description
    watch = DriftWatch(period)
    seen = [watch.crossed(n) for n in (0, 39_999, 40_000, 40_001, 79_999, 120_500, 121_000)]
    assert seen == [None, None, 40_000, None, None, 120_000, None]
    assert "concept B" in watch.announcement(40_000)
    assert "concept A" in watch.announcement(80_000)


def test_producer_and_probe_follow_the_same_recurring_drift(tmp_path: Path) -> None:
    from streamtrain.demo.probe import SamplePool

    plan = DemoPlan.build(
        "hyperplane", rate=100, run_dir=tmp_path, bootstrap_servers="127.0.0.1:9092",
        server_port=8000, trainer_port=9100,
    )  # fmt: skip
    producer = plan.commands()["producer"]
    every = int(producer[producer.index("--drift-every") + 1])
    assert every == plan.drift_every == 2_000
    pool = SamplePool.from_dataset(plan.dataset, period=2 * every)
    stream = next(plan.dataset.iterate(2 * every, seed=0, chunk_size=2 * every))
    assert (pool.labels == stream.labels).all(), "the probe's labels are the producer's"
    assert pool.near(2 * every + 1500, turn=5) == pool.near(1500, turn=5), "wraps each cycle"


def test_the_prediction_line_reads_as_plain_words() -> None:
    right = DemoStats(prediction=Prediction(1, 1, "70"), predictions_correct=3, predictions_sent=4)
    assert "predicted 1, true 1, right, version 70" in plain_line(right)
    wrong = DemoStats(prediction=Prediction(0, 1, "71"))
    assert "predicted 0, true 1, wrong, version 71" in plain_line(wrong)
    assert "no prediction yet" in plain_line(DemoStats())
