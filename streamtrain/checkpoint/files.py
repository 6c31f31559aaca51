"""Durable writes and verified reads of the files inside one checkpoint directory."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from streamtrain.checkpoint.state import CheckpointError


def write_durable(directory: Path, name: str, data: bytes) -> str:
    """Write ``data`` to ``directory/name``, fsync it, and return its sha256 hex digest."""
    path = directory / name
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return hashlib.sha256(data).hexdigest()


def tensors_to_bytes(tensors: Mapping[str, torch.Tensor], what: str) -> bytes:
    """Serialize tensors to safetensors bytes; ``what`` names the content in errors."""
    try:
        return save_safetensors(dict(tensors))
    except (ValueError, RuntimeError, SafetensorError) as exc:
        raise CheckpointError(f"cannot serialize {what} as safetensors: {exc}") from exc


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_verified(directory: Path, name: str, sha256: str) -> bytes:
    """Read ``directory/name`` and check it against the digest ``meta.json`` recorded."""
    path = directory / name
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete") from exc
    except OSError as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise CheckpointError(
            f"{path}: sha256 {actual[:16]}… does not match {sha256[:16]}… recorded in meta.json; "
            "the file is truncated or corrupt"
        )
    return data


def bytes_to_tensors(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    """Decode safetensors bytes that already passed their checksum."""
    try:
        return load_safetensors(data)
    except (ValueError, RuntimeError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from exc


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``root`` so saves, prunes and loads never interleave."""
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
