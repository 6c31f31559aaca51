"""Static checks of the compose stack: it validates, and its parts agree with each other.

No Docker engine and no ``docker-compose`` binary are needed: the files are checked against the
Compose Specification with PyPI's ``compose-spec`` (a wheel for every common platform, so
``make test`` passes on a laptop without root), ``docker-compose config`` runs as an extra check
where it is installed, and the rest is read with PyYAML. Interpolations like
``${SAMPLE_PARTITIONS:-3}`` resolve to their defaults, which is what a plain ``docker compose up``
uses.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from compose_spec import PyOptions

from streamtrain.config import load_settings
from streamtrain.snapshot import wire

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "docker-compose.yml"
GPU = ROOT / "docker-compose.gpu.yml"
PORTS = ROOT / "docker-compose.ports.yml"
NGINX = ROOT / "deploy" / "gateway" / "nginx.conf"
STREAMTRAIN_SERVICES = ("trainer", "server", "join", "producer")
_DEFAULTED = re.compile(r"\$\{[A-Z0-9_]+:-([^}]*)\}")


def _resolve(value: str) -> str:
    """Apply compose interpolation with every variable unset: defaults in, ``$$`` to ``$``."""
    return _DEFAULTED.sub(lambda m: m.group(1), value).replace("$$", "$")


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name} must hold a mapping"
    return data


def _services(path: Path = MAIN) -> dict[str, dict[str, Any]]:
    services = _load(path)["services"]
    assert isinstance(services, dict)
    return services


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    assert isinstance(command, list), "write commands in exec form (a YAML list)"
    return [_resolve(str(token)) for token in command]


def _option(command: list[str], name: str) -> str:
    assert name in command, f"expected {name} in {command}"
    return command[command.index(name) + 1]


def _environment(*services: dict[str, Any]) -> dict[str, str]:
    """Environment after compose's merge (later files override earlier ones key by key)."""
    env: dict[str, str] = {}
    for service in services:
        env.update({k: _resolve(str(v)) for k, v in service.get("environment", {}).items()})
    return env


def _healthcheck_url(service: dict[str, Any]) -> str:
    test = " ".join(service["healthcheck"]["test"])
    match = re.search(r"https?://[^'\" ]+", test)
    assert match, f"healthcheck {test!r} names no URL"
    return match.group(0)


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Compose's override rule for the shapes these files use: mappings merge key by key,
    anything else (scalars, sequences) is replaced by the override."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _spec_check(text: str) -> list[str]:
    """Parse with the Compose Specification's reference types (the Rust ``compose_spec`` crate,
    PyPI ``compose-spec``): unknown keys, wrong types, bad enum values, units, port syntax and
    undefined networks/volumes fail. Returns the service names."""
    compose = PyOptions(apply_merge=True).from_yaml(_resolve(text))
    compose.validate()
    return compose.service_names()


def test_compose_files_follow_the_compose_specification() -> None:
    assert set(_spec_check(MAIN.read_text())) >= {*STREAMTRAIN_SERVICES, "kafka", "gateway"}
    assert _spec_check(GPU.read_text()) == ["trainer"]
    assert set(_spec_check(PORTS.read_text())) <= set(_services())
    merged = _merged(
        yaml.safe_load(_resolve(MAIN.read_text())), yaml.safe_load(_resolve(GPU.read_text()))
    )
    assert "trainer" in _spec_check(yaml.safe_dump(merged))


@pytest.mark.parametrize(
    ("original", "broken"),
    [
        ("stop_grace_period: 30s", "stop_grace_periode: 30s"),
        ("restart: unless-stopped", "restart: sometimes"),
        ('"127.0.0.1:${GRAFANA_PORT:-3000}:3000"', '"127.0.0.1:3000:"'),
    ],
    ids=["misspelt-key", "bad-enum", "bad-port"],
)
def test_the_specification_check_catches_a_mistake(original: str, broken: str) -> None:
    """The check is not vacuous: one typo an editor could make is rejected."""
    text = MAIN.read_text()
    assert original in text
    with pytest.raises(ValueError):
        _spec_check(text.replace(original, broken, 1))


def test_compose_files_validate_with_docker_compose_where_installed() -> None:
    """An extra check where a ``docker-compose`` binary is on PATH (Debian's 1.29 or Compose v2
    both validate offline): it also applies interpolation and the real override merge.
    Nothing needs it: the specification check above runs everywhere."""
    binary = shutil.which("docker-compose")
    if binary is None:
        # A tool outside the Python install: its absence is no broken install.
        pytest.skip("no docker-compose on PATH; the compose-spec check above covers the files")
    for files in ([MAIN], [MAIN, GPU], [MAIN, PORTS]):
        args = [binary]
        for path in files:
            args += ["-f", str(path)]
        result = subprocess.run(
            [*args, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        names = " + ".join(p.name for p in files)
        assert result.returncode == 0, f"{names} is invalid:\n{result.stderr}"


_HELP_ALL = """
import sys
from streamtrain.cli import main
for sub in sys.argv[1:]:
    sys.argv = ["streamtrain", sub, "--help"]
    print(f"=== begin {sub}", flush=True)
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stderr.flush()
    print(f"=== end {sub} exit {code}", flush=True)
"""


def _helps(subcommands: set[str]) -> dict[str, tuple[int, str]]:
    """``streamtrain <sub> --help`` for each sub, in one fresh interpreter: (exit code, text).

    A subprocess, not CliRunner: in-process, a test that imported ``streamtrain.cli.train``
    would register the command and hide a missing import in ``streamtrain/cli/__init__.py``.
    One interpreter for all of them, since importing the CLI (torch) dominates the time.
    """
    result = subprocess.run(
        [sys.executable, "-c", _HELP_ALL, *sorted(subcommands)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "240", "TERMINAL_WIDTH": "240", "NO_COLOR": "1"},
        stdin=subprocess.DEVNULL,
    )
    found = re.findall(r"=== begin (\S+)\n(.*?)=== end \1 exit (-?\d+)", result.stdout, re.S)
    helps = {sub: (int(code), text) for sub, text, code in found}
    assert helps.keys() == subcommands, f"help run failed:\n{result.stdout}"
    return helps


def test_every_streamtrain_command_uses_existing_cli_options() -> None:
    commands = [_command(_services()[name]) for name in STREAMTRAIN_SERVICES]
    commands += [_command(s) for s in _services(GPU).values() if "command" in s]
    helps = _helps({command[0] for command in commands})
    for command in commands:
        subcommand, options = command[0], [t.split("=")[0] for t in command if t[:2] == "--"]
        code, text = helps[subcommand]
        assert code == 0, (
            f"`streamtrain {subcommand} --help` failed (is the subcommand registered in "
            f"streamtrain/cli/__init__.py?):\n{text}"
        )
        for option in options:
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), (
                f"`streamtrain {subcommand}` has no option {option}; compose runs {command}"
            )


@pytest.mark.parametrize("with_gpu", [False, True], ids=["cpu", "gpu"])
def test_service_environments_are_valid_settings(
    with_gpu: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = _services(GPU) if with_gpu else {}
    for name in STREAMTRAIN_SERVICES:
        env = _environment(_services()[name], overrides.get(name, {}))
        with monkeypatch.context() as patch:
            for key in [k for k in os.environ if k.startswith("STREAMTRAIN_")]:
                patch.delenv(key)
            for key, value in env.items():
                patch.setenv(key, value)
            settings = load_settings()
        assert settings.kafka.bootstrap_servers == "kafka:9092", name
        assert settings.model.input_shape == (16,) and settings.model.num_classes == 2, name
        if name == "trainer":
            assert settings.train.device == ("cuda" if with_gpu else "cpu")
        if name == "server":
            assert settings.serve.host == "0.0.0.0", "a server on loopback is unreachable"
            assert settings.serve.prediction_log is False, "off by default, as in the settings"


def test_topic_service_creates_every_topic_the_processes_use() -> None:
    services = _services()
    script = _resolve(" ".join(services["topics"]["command"]))
    created = dict(re.findall(r"--topic (\S+) --partitions (\d+)", script))
    used = {
        v
        for name in STREAMTRAIN_SERVICES
        for k, v in _environment(services[name]).items()
        if k.startswith("STREAMTRAIN_TOPICS__")
    }
    used.add(_option(_command(services["server"]), "--snapshots-topic"))
    used.add(_option(_command(services["producer"]), "--topic"))
    assert used <= created.keys(), f"topics used but never created: {used - created.keys()}"
    env = _environment(services["trainer"])
    assert int(created[env["STREAMTRAIN_TOPICS__SAMPLES"]]) >= 2, "samples needs partitions"
    snapshots_line = next(
        line for line in script.splitlines() if env["STREAMTRAIN_TOPICS__SNAPSHOTS"] in line
    )
    assert "retention.ms=" in snapshots_line, "the snapshots topic needs a retention setting"
    snapshots = created[env["STREAMTRAIN_TOPICS__SNAPSHOTS"]]
    assert int(snapshots) == wire.SNAPSHOT_PARTITIONS, "bases' chunks go to partition 1"
    join_env = _environment(services["join"])
    predictions = created[join_env["STREAMTRAIN_TOPICS__PREDICTIONS"]]
    assert predictions == created[join_env["STREAMTRAIN_TOPICS__LABELS"]], (
        "predictions and labels must be co-partitioned (docs/labels.md)"
    )
    assert int(predictions) >= 2, "the join scales by partition"
    kafka_env = services["kafka"]["environment"]
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_dependencies_wait_on_real_conditions() -> None:
    services = _services()
    for name, service in services.items():
        for dep, spec in service.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s healthcheck"
            if condition == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{dep} must run once and exit"
    for name in ("trainer", "server", "join", "producer"):
        assert services[name]["depends_on"]["topics"]["condition"] == (
            "service_completed_successfully"
        )


def test_healthchecks_probe_the_ports_the_commands_listen_on() -> None:
    services = _services()
    trainer_url = urlsplit(_healthcheck_url(services["trainer"]))
    assert trainer_url.port == int(_option(_command(services["trainer"]), "--metrics-port"))
    assert trainer_url.path == "/health/live", "the loop's heartbeat, not the metrics thread"
    server_url = urlsplit(_healthcheck_url(services["server"]))
    assert server_url.port == int(_option(_command(services["server"]), "--port"))
    assert server_url.path == "/v2/health/ready"
    join_url = urlsplit(_healthcheck_url(services["join"]))
    assert join_url.port == int(_option(_command(services["join"]), "--metrics-port"))
    assert join_url.path == "/health/live", "the join loop's heartbeat, not the metrics thread"
    for name in ("trainer", "server", "join"):
        test = services[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], "slim images have no curl; use python"
        compile(test[3], f"{name} healthcheck", "exec")


def test_server_scales_without_host_port_conflicts() -> None:
    services = _services()
    port = _option(_command(services["server"]), "--port")
    mappings = services["server"].get("ports", []) + _services(PORTS)["server"].get("ports", [])
    assert mappings, "docker-compose.ports.yml publishes the replicas"
    for mapping in mappings:
        parts = _resolve(str(mapping)).split(":")
        assert parts[-1] == port, f"server publishes {mapping}, but listens on {port}"
        host_port = parts[-2] if len(parts) > 1 else ""
        assert host_port == "", f"fixed host port {mapping} breaks --scale server=N"
    assert "container_name" not in services["server"], "container_name breaks --scale"
    gateway = services["gateway"]
    conf_mount = next(v for v in gateway["volumes"] if "nginx.conf" in v)
    conf = (ROOT / conf_mount.split(":")[0]).read_text()
    assert f"http://server:{port}" in conf, "the gateway must proxy to every server replica"
    assert "resolver 127.0.0.11" in conf, "re-resolve Docker DNS so new replicas are used"


def test_join_scales_with_shared_state_and_no_fixed_names_or_ports() -> None:
    """``--scale join=N``: replicas share one consumer group and one state volume (a partition
    that moves to another replica resumes from its checkpoint there), and nothing in the
    service pins one container."""
    services = _services()
    join = services["join"]
    assert "container_name" not in join and "ports" not in join
    assert "join" not in _services(PORTS), "the join's metrics are scraped on the network"
    state_dir = _option(_command(join), "--state-dir")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in join["volumes"]}
    assert state_dir in mounts, f"{state_dir} must be a volume, or a restart loses the state"
    assert mounts[state_dir] in _load(MAIN)["volumes"], "a named volume every replica mounts"
    assert "STREAMTRAIN_JOIN__GROUP_ID" not in _environment(join), "one group for all replicas"
    assert join["stop_grace_period"], "time for a last checkpoint on stop"


def test_gpu_override_reserves_a_gpu_and_builds_cuda_torch() -> None:
    trainer = _services(GPU)["trainer"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices)
    cpu_index = _services()["trainer"]["build"]["args"]["TORCH_INDEX_URL"]
    gpu_index = trainer["build"]["args"]["TORCH_INDEX_URL"]
    assert "/whl/cpu" in cpu_index and gpu_index == "", "GPU: pip's default index (CUDA wheels)"
    assert trainer["image"] != _services()["trainer"]["image"], "keep CPU and CUDA images apart"


def test_prometheus_scrapes_every_service_on_its_metrics_port() -> None:
    services = _services()
    prometheus = services["prometheus"]
    config_file = next(a.split("=", 1)[1] for a in prometheus["command"] if "config.file" in a)
    mount = next(v for v in prometheus["volumes"] if v.split(":")[1] == config_file)
    config = _load(ROOT / mount.split(":")[0])
    expected_ports = {
        "trainer": int(_option(_command(services["trainer"]), "--metrics-port")),
        "server": int(_option(_command(services["server"]), "--port")),
        "join": int(_option(_command(services["join"]), "--metrics-port")),
    }
    scraped: dict[str, int] = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            assert job.get("metrics_path", "/metrics") == "/metrics"
            for host in sd["names"]:
                assert host in services, f"job {job['job_name']} scrapes unknown {host}"
                scraped[host] = sd["port"]
    assert scraped == expected_ports


def test_scraped_services_listen_beyond_loopback() -> None:
    # Each process defaults to 127.0.0.1 (train.metrics_host, join.metrics_host, serve.host);
    # Prometheus reaches them over the compose network only if they listen on every interface.
    services = _services()
    hosts = {
        "trainer": _environment(services["trainer"]).get("STREAMTRAIN_TRAIN__METRICS_HOST"),
        "join": _environment(services["join"]).get("STREAMTRAIN_JOIN__METRICS_HOST"),
        "server": _option(_command(services["server"]), "--host"),
    }
    assert hosts == {"trainer": "0.0.0.0", "join": "0.0.0.0", "server": "0.0.0.0"}


def test_grafana_provisioning_matches_its_mounts() -> None:
    services = _services()
    grafana = services["grafana"]
    mounts: dict[str, Path] = {
        v.split(":")[1]: ROOT / v.split(":")[0] for v in grafana["volumes"] if "/" in v
    }

    def mounted(target: str) -> Path:
        assert target in mounts, f"grafana reads {target}, but compose mounts only {set(mounts)}"
        return mounts[target]

    provisioning = mounted("/etc/grafana/provisioning")
    assert (provisioning / "datasources").is_dir() and (provisioning / "dashboards").is_dir()
    for provider_file in (provisioning / "dashboards").glob("*.yml"):
        for provider in _load(provider_file)["providers"]:
            folder = mounted(provider["options"]["path"])
            assert (folder / "streamtrain.json").is_file(), f"{folder} has no dashboard"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    home_dir, _, home_name = home.rpartition("/")
    assert (mounted(home_dir) / home_name).is_file(), f"no home dashboard at {home}"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    prometheus_port = urlsplit(_healthcheck_url(services["prometheus"])).port
    for source_file in (provisioning / "datasources").glob("*.yml"):
        for source in _load(source_file)["datasources"]:
            url = urlsplit(source["url"])
            assert (url.hostname, url.port) == ("prometheus", prometheus_port)


def _published(path: Path) -> dict[str, list[str]]:
    return {
        name: [_resolve(str(m)) for m in service.get("ports", [])]
        for name, service in _services(path).items()
        if service.get("ports")
    }


def test_only_gateway_and_grafana_are_published_and_only_on_loopback() -> None:
    published = _published(MAIN)
    assert published.keys() == {"gateway", "grafana"}, f"published by default: {set(published)}"
    for path in (MAIN, PORTS):
        for name, mappings in _published(path).items():
            for mapping in mappings:
                assert mapping.startswith("127.0.0.1:"), f"{path.name} {name} publishes {mapping}"
    exposed = _published(PORTS)
    assert {"kafka", "trainer", "server", "prometheus"} <= exposed.keys()


def test_every_service_rotates_its_logs_and_has_resource_limits() -> None:
    for name, service in _services().items():
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file", f"{name}: logs must rotate"
        assert {"max-size", "max-file"} <= logging.get("options", {}).keys(), name
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("memory") and limits.get("cpus"), f"{name} needs memory and CPU limits"


def _nginx_directives(block: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for statement in re.sub(r"#[^\n]*", "", block).split(";"):
        words = statement.split()
        if words and "{" not in statement and "}" not in statement:
            directives[words[0]] = words[1:]
    return directives


def test_gateway_retries_inference_posts_past_a_replica_that_is_not_ready() -> None:
    """nginx re-sends a POST to the next replica only with ``non_idempotent``; every inference
    request is a POST, and a replica answers 503 until its first snapshot is live."""
    conf = NGINX.read_text()
    location = re.search(r"location / \{(.*?)\n    \}", conf, re.S)
    assert location, "the gateway has no catch-all location"
    directives = _nginx_directives(location.group(1))
    retry_on = set(directives["proxy_next_upstream"])
    assert {"error", "timeout", "http_502", "http_503", "non_idempotent"} <= retry_on
    assert int(directives["proxy_next_upstream_tries"][0]) >= 2, "retry at least once"
    assert directives["proxy_next_upstream_timeout"], "bound the time spent retrying"


def test_nginx_accepts_the_gateway_config_where_installed(tmp_path: Path) -> None:
    binary = shutil.which("nginx")
    if binary is None:
        # A tool outside the Python install: its absence is no broken install.
        pytest.skip("no nginx on PATH; the directive checks above cover the retry settings")
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path};\n"
        f"  proxy_temp_path {tmp_path};\n  include {NGINX};\n}}\n"
    )
    result = subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-c", str(main)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_gpu_override_names_its_cuda_build_and_driver_minimum() -> None:
    text = GPU.read_text()
    assert re.search(r"CUDA 1\d\.\d", text), "name the CUDA build the torch wheel carries"
    assert re.search(r"driver \d{3}\.\d+", text), "name the NVIDIA driver minimum"
    pinned = re.search(r"^torch==(\S+)$", (ROOT / "deploy" / "constraints.txt").read_text(), re.M)
    assert pinned and f"torch {pinned.group(1)}" in text, "the note must be about the pinned torch"
