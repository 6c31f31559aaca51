"""Ed25519 signatures on manifest records: only the trainer's key can make a server swap.

The signature covers the exact bytes of a manifest record's value, prefixed with a context
string, and travels in the ``streamtrain-signature`` header as ``ed25519:<key id>:<base64>``.
The manifest commits to the payload's sha256 (and through it to every chunk), so one signature
over a few hundred bytes authenticates the whole snapshot, whatever the model size. Any future
manifest kind (a delta manifest, say) is signed the same way: the signature is over the record
value, whose ``format`` field says what kind of manifest it is.

A key id is the first 16 hex digits of the sha256 of the raw public key: it names a key in logs
and errors without revealing anything secret. Keys themselves never appear in messages.

Example:
    >>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    >>> private = Ed25519PrivateKey.generate()
    >>> signer = ManifestSigner(private)
    >>> header = signer.sign(b'{"format": "streamtrain.snapshot.v1"}')
    >>> verifier = ManifestVerifier([private.public_key()], "require")
    >>> verifier.check(b'{"format": "streamtrain.snapshot.v1"}', header) is None
    True
    >>> verifier.check(b'{"format": "streamtrain.snapshot.v2"}', header)[:31]
    'signature does not verify under'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

SignaturePolicy = Literal["require", "off"]

_SCHEME = "ed25519"
# Domain separation: a signature made for a manifest can never be taken for another message
# signed with the same key, and the version lets the scheme change without ambiguity.
_CONTEXT = b"streamtrain manifest signature v1\n"
_SIGNATURE_BYTES = 64


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the path, never the key."""


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of sha256 of the raw public key: a name safe to log."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class ManifestSigner:
    """Signs manifest record values with the trainer's private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.key_id = key_id(private_key.public_key())

    @classmethod
    def from_file(cls, path: Path) -> ManifestSigner:
        return cls(load_private_key(path))

    def sign(self, manifest_bytes: bytes) -> str:
        """The ``streamtrain-signature`` header value for this manifest record value."""
        signature = self._private_key.sign(_CONTEXT + manifest_bytes)
        return f"{_SCHEME}:{self.key_id}:{base64.b64encode(signature).decode()}"

    def __repr__(self) -> str:  # never the key itself
        return f"ManifestSigner(key_id={self.key_id!r})"


class ManifestVerifier:
    """Accepts a manifest only if it is signed by one of ``public_keys`` (policy ``require``).

    Several keys make rotation possible: servers trust old and new key while the trainer
    switches. With policy ``off`` every manifest passes (signatures are not even parsed).
    """

    def __init__(self, public_keys: Sequence[Ed25519PublicKey], policy: SignaturePolicy) -> None:
        if policy == "require" and not public_keys:
            raise ValueError(
                "signature policy 'require' needs at least one trusted public key "
                "(serve.trusted_keys); create a pair with `streamtrain keys generate`"
            )
        self.policy = policy
        self._keys = {key_id(k): k for k in public_keys}

    @classmethod
    def from_files(cls, paths: Sequence[Path], policy: SignaturePolicy) -> ManifestVerifier:
        return cls([load_public_key(p) for p in paths], policy)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def check(self, manifest_bytes: bytes, header: str | None) -> str | None:
        """None when the manifest may be used; otherwise why not (safe to log)."""
        if self.policy == "off":
            return None
        trusted = ", ".join(self.key_ids)
        if not header:
            return f"manifest is not signed; this server requires a signature by key {trusted}"
        scheme, _, rest = header.partition(":")
        signer_id, _, encoded = rest.partition(":")
        if scheme != _SCHEME or not signer_id or not encoded:
            return f"signature header is not of the form '{_SCHEME}:<key id>:<base64>'"
        key = self._keys.get(signer_id)
        if key is None:
            return f"signed by key {signer_id[:16]}, which is not trusted here (trusted: {trusted})"
        try:
            signature = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return f"signature by key {signer_id} is not valid base64"
        if len(signature) != _SIGNATURE_BYTES:
            return f"signature by key {signer_id} is {len(signature)} bytes, not 64"
        try:
            key.verify(signature, _CONTEXT + manifest_bytes)
        except InvalidSignature:
            return (
                f"signature does not verify under key {signer_id}: the manifest or its "
                "signature was altered after signing"
            )
        return None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = _load(path, private=True)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a private key that is not Ed25519")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = _load(path, private=False)
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} holds a public key that is not Ed25519")
    return key


def _load(path: Path, *, private: bool) -> object:
    kind = "private" if private else "public"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(
            f"cannot read {kind} key file {path}: {exc.strerror or exc}; create a pair with "
            "`streamtrain keys generate`"
        ) from None
    try:
        if private:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        # The library's message may quote the file; ours names the path only.
        raise KeyFileError(
            f"{path} is not a PEM {kind} key (unencrypted PKCS#8 for private keys, "
            "SubjectPublicKeyInfo for public keys), as `streamtrain keys generate` writes"
        ) from None


def generate_key_pair(directory: Path, name: str, *, force: bool = False) -> tuple[Path, Path, str]:
    """Write ``<name>.key`` (private, mode 0600) and ``<name>.pub`` under ``directory``.

    Returns both paths and the key id. The private key file is created with 0600 from the
    start (never world-readable, not even briefly); existing files are kept unless ``force``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    if not force:
        for existing in (private_path, public_path):
            if existing.exists():
                raise KeyFileError(f"{existing} already exists; pass --force to replace it")
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.unlink(missing_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem)
    os.chmod(private_path, 0o600)  # umask cannot widen it, but make the mode explicit
    public_path.write_bytes(public_pem)
    return private_path, public_path, key_id(private.public_key())
