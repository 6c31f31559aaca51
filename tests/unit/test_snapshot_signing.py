"""Ed25519 manifest signatures: what verifies, what is refused and why, keys on disk."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

import streamtrain.cli  # noqa: F401  (registers every subcommand)
from streamtrain.cli.command import app
from streamtrain.snapshot.signing import (
    KeyFileError,
    ManifestSigner,
    ManifestVerifier,
    generate_key_pair,
    key_id,
    load_private_key,
    load_public_key,
)

MANIFEST = b'{"format":"streamtrain.snapshot.v1","version":7,"sha256":"ab"}'


def _flip(data: bytes, index: int) -> bytes:
    flipped = bytearray(data)
    flipped[index] ^= 0x01
    return bytes(flipped)


@pytest.fixture
def trainer_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_signed_manifest_verifies(trainer_key: Ed25519PrivateKey) -> None:
    header = ManifestSigner(trainer_key).sign(MANIFEST)
    assert header.startswith(f"ed25519:{key_id(trainer_key.public_key())}:")
    assert ManifestVerifier([trainer_key.public_key()], "require").check(MANIFEST, header) is None


def test_one_flipped_byte_anywhere_is_refused(trainer_key: Ed25519PrivateKey) -> None:
    verifier = ManifestVerifier([trainer_key.public_key()], "require")
    header = ManifestSigner(trainer_key).sign(MANIFEST)
    prefix, encoded = header.rsplit(":", 1)
    signature = base64.b64decode(encoded)
    for index in (0, len(MANIFEST) // 2, len(MANIFEST) - 1):
        problem = verifier.check(_flip(MANIFEST, index), header)
        assert problem is not None and "does not verify" in problem
    for index in (0, 31, 63):
        bad = f"{prefix}:{base64.b64encode(_flip(signature, index)).decode()}"
        problem = verifier.check(MANIFEST, bad)
        assert problem is not None and "does not verify" in problem


def test_unsigned_unknown_key_and_malformed_headers_are_refused(
    trainer_key: Ed25519PrivateKey,
) -> None:
    verifier = ManifestVerifier([trainer_key.public_key()], "require")
    trusted = key_id(trainer_key.public_key())
    unsigned = verifier.check(MANIFEST, None)
    assert unsigned is not None and "not signed" in unsigned and trusted in unsigned
    intruder = ManifestSigner(Ed25519PrivateKey.generate())
    foreign = verifier.check(MANIFEST, intruder.sign(MANIFEST))
    assert foreign is not None and intruder.key_id in foreign and "not trusted" in foreign
    for header in ("rsa:abc:AAAA", "ed25519::", f"ed25519:{trusted}:not base64!", "garbage"):
        assert verifier.check(MANIFEST, header) is not None
    short = f"ed25519:{trusted}:{base64.b64encode(b'x' * 10).decode()}"
    assert "not 64" in str(verifier.check(MANIFEST, short))


def test_rotation_accepts_either_trusted_key(trainer_key: Ed25519PrivateKey) -> None:
    new_key = Ed25519PrivateKey.generate()
    verifier = ManifestVerifier([trainer_key.public_key(), new_key.public_key()], "require")
    for key in (trainer_key, new_key):
        assert verifier.check(MANIFEST, ManifestSigner(key).sign(MANIFEST)) is None


def test_policy_off_accepts_anything_and_require_needs_a_key() -> None:
    assert ManifestVerifier([], "off").check(MANIFEST, None) is None
    assert ManifestVerifier([], "off").check(MANIFEST, "garbage") is None
    with pytest.raises(ValueError, match="at least one trusted public key"):
        ManifestVerifier([], "require")


def test_signature_binds_the_manifest_context_not_bare_bytes(
    trainer_key: Ed25519PrivateKey,
) -> None:
    # A signature the key made over the bare manifest bytes (for any other purpose) is refused:
    # manifest signatures are domain-separated.
    bare = base64.b64encode(trainer_key.sign(MANIFEST)).decode()
    header = f"ed25519:{key_id(trainer_key.public_key())}:{bare}"
    verifier = ManifestVerifier([trainer_key.public_key()], "require")
    assert verifier.check(MANIFEST, header) is not None


def test_generated_pair_is_private_and_loads(tmp_path: Path) -> None:
    private_path, public_path, kid = generate_key_pair(tmp_path / "keys", "trainer")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    signer = ManifestSigner.from_file(private_path)
    verifier = ManifestVerifier.from_files([public_path], "require")
    assert signer.key_id == kid and verifier.key_ids == [kid]
    assert verifier.check(MANIFEST, signer.sign(MANIFEST)) is None
    assert kid in repr(signer) and "PRIVATE" not in repr(signer)
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key_pair(tmp_path / "keys", "trainer")
    _, _, replaced = generate_key_pair(tmp_path / "keys", "trainer", force=True)
    assert replaced != kid


def test_key_errors_name_the_path_never_the_key(tmp_path: Path) -> None:
    private_path, public_path, _ = generate_key_pair(tmp_path, "trainer")
    secret = private_path.read_text()
    # A private key where a public key belongs (and the reverse) is refused by path only.
    for load, path in ((load_public_key, private_path), (load_private_key, public_path)):
        with pytest.raises(KeyFileError) as info:
            load(path)  # type: ignore[operator]
        assert str(path) in str(info.value)
        assert secret.splitlines()[1] not in str(info.value)
    with pytest.raises(KeyFileError, match="cannot read private key file"):
        load_private_key(tmp_path / "missing.key")
    rsa_like = tmp_path / "other.pub"
    rsa_like.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_public_key(rsa_like)


def test_keys_generate_command(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "k"
    result = runner.invoke(app, ["keys", "generate", "--out-dir", str(out), "--name", "t1"])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((out / "t1.key").stat().st_mode) == 0o600
    kid = key_id(load_public_key(out / "t1.pub"))
    assert f"key id {kid}" in result.output
    assert (out / "t1.key").read_text().splitlines()[1] not in result.output
    again = runner.invoke(app, ["keys", "generate", "--out-dir", str(out), "--name", "t1"])
    assert again.exit_code == 2 and "--force" in again.output


def test_train_refuses_an_unusable_signing_key_before_touching_kafka(tmp_path: Path) -> None:
    _, public_path, _ = generate_key_pair(tmp_path, "trainer")
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--bootstrap-servers",
            "127.0.0.1:1",  # nothing listens: reaching Kafka would take the connect timeout
            "--checkpoint-dir",
            str(tmp_path / "checkpoints"),
            "--metrics-port",
            "0",
        ],
        env={"STREAMTRAIN_TRAIN__SIGNING_KEY": str(public_path)},
    )
    assert result.exit_code == 2, result.output
    assert f"{public_path} is not a PEM private key" in result.output
    assert public_path.read_text().splitlines()[1] not in result.output
