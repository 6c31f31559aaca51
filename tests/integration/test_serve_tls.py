"""TLS on the HTTP and gRPC ports against a real server over the real broker: clients that trust
the certificate get answers on both, plain-text clients do not, and a bad key fails at start."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tritonclient.utils import InferenceServerException

from streamtrain.builders.server import build_worker
from streamtrain.kafka import create_topics
from tests.integration.process_output import REQUEST_S
from tests.integration.snapshot_harness import ROW, publish, serve_settings, wait


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_and_grpc_over_tls(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    create_topics(kafka_bootstrap, [unique_name])
    cert, key = _self_signed(tmp_path)
    settings = serve_settings(
        kafka_bootstrap, unique_name, grpc_port=0, tls_certfile=str(cert), tls_keyfile=str(key)
    )
    worker = build_worker(settings)
    url = worker.start()
    assert url.startswith("https://")
    try:
        publish(settings, 4)
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}

        trusted = ssl.create_default_context(cafile=str(cert))

        def answered() -> str | None:
            response = httpx.post(
                f"{url}/v2/models/m/infer", json=body, verify=trusted, timeout=REQUEST_S
            )
            return response.json().get("model_version") if response.status_code == 200 else None

        wait(lambda: answered() == "4", "version 4 over HTTPS")
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port
            httpx.get(url.replace("https://", "http://") + "/v2/health/live", timeout=5)

        assert worker.grpc is not None
        secure = grpcclient.InferenceServerClient(
            worker.grpc.target, ssl=True, root_certificates=str(cert)
        )
        tensor = grpcclient.InferInput("input", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.array([ROW], dtype=np.float32))
        assert secure.infer("m", [tensor]).get_response().model_version == "4"
        secure.close()
        plain = grpcclient.InferenceServerClient(worker.grpc.target)
        with pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=5)
        plain.close()
    finally:
        worker.stop()


def test_a_key_that_is_not_the_certificates_fails_at_start(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    cert, _ = _self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = _self_signed(tmp_path / "other")
    settings = serve_settings(
        kafka_bootstrap, unique_name, tls_certfile=str(cert), tls_keyfile=str(other_key)
    )
    with pytest.raises(OSError):
        build_worker(settings)
