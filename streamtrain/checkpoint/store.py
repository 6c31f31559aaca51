"""A directory of atomic trainer checkpoints: write, prune, restore the newest valid one."""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from streamtrain import metrics
from streamtrain.checkpoint import components as comp
from streamtrain.checkpoint.files import fsync_dir, locked, tensors_to_bytes, write_durable
from streamtrain.checkpoint.meta import (
    FORMAT_VERSION,
    LOG_MARKS,
    META_FILE,
    CheckpointMeta,
    RngMeta,
)
from streamtrain.checkpoint.pause_hook import pause_point
from streamtrain.checkpoint.restore import apply_checkpoint, read_checkpoint, read_meta
from streamtrain.checkpoint.rng import RNG_FILE, capture_rng
from streamtrain.checkpoint.state import CheckpointError, TrainerState
from streamtrain.sample.record_mark import marks_to_json

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-([0-9]{1,19})$")
_TMP = ".tmp-"
_REPLACED = ".replaced-"
_ABANDONED = ".abandoned-"


class CheckpointStore:
    """Atomic checkpoints of model, optimizer, LR scheduler, RNGs and stream offsets.

    Each checkpoint is a directory ``<root>/step-<step, 12 digits>/`` holding
    ``model.safetensors``, ``optimizer.safetensors`` + ``optimizer.json``, optionally
    ``scheduler.json`` (+ ``scheduler.safetensors``), ``rng.safetensors`` and ``meta.json``
    (trainer state, JSON RNG states, and the sha256 of every other file). Only safetensors and
    JSON are ever read back. One writer per ``root``; an advisory lock on ``root/.lock`` keeps
    processes on one host from interleaving.

    Example:
        >>> import tempfile, torch
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> store = CheckpointStore(Path(tempfile.mkdtemp()), keep=2)
        >>> state = TrainerState(step=5, samples_seen=80, run_id="r", offsets={0: 80},
        ...                      model_settings={})
        >>> store.save(state, model, opt).name
        'step-000000000005'
        >>> store.load_latest(model, opt).offsets
        {0: 80}
    """

    def __init__(self, root: Path, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep={keep}: keep at least 1 checkpoint")
        self.root = Path(root)
        self.keep = keep
        self.root.mkdir(parents=True, exist_ok=True)

    def save(
        self,
        state: TrainerState,
        model: nn.Module,
        optimizer: Optimizer,
        scheduler: LRScheduler | None = None,
    ) -> Path:
        """Write a checkpoint of ``state`` and the objects; return its directory.

        1. Capture model, optimizer, scheduler and RNG states into CPU memory and serialize them
           before touching the disk, so unsaveable state fails with the directory untouched.
        2. Write each file into a fresh ``.tmp-…`` directory inside ``root`` and fsync it.
        3. Write ``meta.json`` last, holding every other file's sha256; fsync the temp dir.
        4. Rename the temp dir to ``step-<step>`` and fsync ``root``: this rename is the commit.
           A checkpoint of the same step is first moved aside to ``.replaced-…`` and deleted
           afterwards; a load after a crash between the two renames moves it back.
        5. Prune to the newest ``keep`` checkpoints and drop stale temp dirs of crashed saves;
           checkpoints with a higher step (an abandoned run) are set aside, not loaded again.
        """
        started = time.perf_counter()
        files, rng_meta = self._serialize(model, optimizer, scheduler)
        name = f"step-{state.step:012d}"
        with locked(self.root):
            self._clean_stale()
            tmp = self.root / f"{_TMP}{name}-{uuid.uuid4().hex}"
            tmp.mkdir()
            try:
                digests = {}
                for n, data in files.items():
                    digests[n] = write_durable(tmp, n, data)
                    pause_point("files", state.step)  # test-only (pause_hook), else nothing
                meta = self._meta(state, rng_meta, digests)
                write_durable(tmp, META_FILE, meta)
                fsync_dir(tmp)
                pause_point("meta", state.step)
                final = self._commit(tmp, name)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            pause_point("committed", state.step)
            self._prune(state.step)
        metrics.CHECKPOINT_SECONDS.observe(time.perf_counter() - started)
        metrics.CHECKPOINTS.inc()
        metrics.CHECKPOINT_TIMESTAMP.set_to_current_time()
        log.info("checkpoint %s written in %.3fs", final, time.perf_counter() - started)
        return final

    def load_latest(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        scheduler: LRScheduler | None = None,
        *,
        restore_rng: bool = True,
    ) -> TrainerState | None:
        """Restore the newest valid checkpoint into the given objects; None if there is none.

        1. Finish or undo what a crashed save left (temp dirs, a same-step replacement).
        2. From newest to oldest: read every file, check its sha256, parse and validate it
           against the live model, optimizer and scheduler, all in memory. A torn, corrupt or
           mismatched checkpoint is logged as a WARNING naming it and why, and skipped.
        3. Apply the first valid one: optimizer (torch validates it before changing anything),
           model weights (copied onto the parameters' device), scheduler, then the RNGs.
        """
        with locked(self.root):
            self._clean_stale()
            for step, path in self._checkpoint_dirs():
                try:
                    loaded = read_checkpoint(path, step, model, optimizer, scheduler)
                    apply_checkpoint(
                        loaded, model, optimizer, scheduler, restore_rng_state=restore_rng
                    )
                except CheckpointError as exc:
                    log.warning("skipping checkpoint %s: %s", path, exc)
                    continue
                log.info("restored checkpoint %s", path)
                return loaded.trainer_state()
        return None

    def latest_path(self) -> Path | None:
        """The newest checkpoint whose ``meta.json`` is valid and whose files all exist.

        Cheap (no hashing); :meth:`load_latest` additionally verifies every checksum.
        """
        for step, path in self._checkpoint_dirs():
            try:
                meta = read_meta(path, step)
            except CheckpointError:
                continue
            if all((path / name).is_file() for name in meta.files):
                return path
        return None

    # --- writing ----------------------------------------------------------------------------

    @staticmethod
    def _serialize(
        model: nn.Module, optimizer: Optimizer, scheduler: LRScheduler | None
    ) -> tuple[dict[str, bytes], RngMeta]:
        files = {comp.MODEL_FILE: tensors_to_bytes(comp.model_tensors(model), "model weights")}
        opt_tensors, opt_json = comp.encode_optimizer(optimizer)
        files[comp.OPTIMIZER_TENSORS] = tensors_to_bytes(opt_tensors, "optimizer state")
        files[comp.OPTIMIZER_JSON] = opt_json
        if scheduler is not None:
            sched_tensors, sched_json = comp.encode_scheduler(scheduler)
            files[comp.SCHEDULER_JSON] = sched_json
            if sched_tensors:
                files[comp.SCHEDULER_TENSORS] = tensors_to_bytes(sched_tensors, "scheduler state")
        rng_tensors, rng_meta = capture_rng()
        files[RNG_FILE] = tensors_to_bytes(rng_tensors, "RNG state")
        return files, rng_meta

    @staticmethod
    def _meta(state: TrainerState, rng: RngMeta, digests: dict[str, str]) -> bytes:
        for partition, offset in state.offsets.items():
            if not isinstance(partition, int) or not isinstance(offset, int) or offset < 0:
                raise CheckpointError(
                    f"offsets entry {partition!r}: {offset!r}: offsets must map int partitions "
                    "to non-negative int offsets"
                )
        try:
            meta = CheckpointMeta(
                format=FORMAT_VERSION,
                step=state.step,
                samples_seen=state.samples_seen,
                run_id=state.run_id,
                model_settings=state.model_settings,
                offsets={str(p): o for p, o in sorted(state.offsets.items())},
                data_watermark=state.data_watermark,
                created_at=time.time(),
                rng=rng,
                # Only with marks: a checkpoint without them reads as one written before them.
                extra={**state.extra, LOG_MARKS: marks_to_json(state.marks)}
                if state.marks
                else state.extra,
                files=digests,
            )
        except ValueError as exc:
            raise CheckpointError(f"TrainerState cannot be checkpointed: {exc}") from exc
        return comp.to_json_bytes(meta.model_dump(mode="python"), "TrainerState")

    def _commit(self, tmp: Path, name: str) -> Path:
        final = self.root / name
        aside: Path | None = None
        if final.exists():
            aside = self.root / f"{_REPLACED}{name}-{uuid.uuid4().hex}"
            os.rename(final, aside)
        os.rename(tmp, final)
        fsync_dir(self.root)
        if aside is not None:
            shutil.rmtree(aside)
        return final

    def _prune(self, written: int) -> None:
        """Keep the newest ``keep`` checkpoints up to ``written``; set aside any beyond it.

        A checkpoint with a higher step than the one just written belongs to an abandoned
        line of training: the trainer restored an older one because it was torn, corrupt or
        did not fit the model. It is renamed to ``.abandoned-…`` (kept for inspection, never
        loaded) so that it can neither be restored over newer work nor crowd good checkpoints
        out of ``keep``.
        """
        current = []
        for step, path in self._checkpoint_dirs():
            if step > written:
                aside = self.root / f"{_ABANDONED}{path.name}-{uuid.uuid4().hex[:8]}"
                log.warning(
                    "setting aside %s as %s: its step is past the checkpoint just written "
                    "(step %d), so it belongs to an abandoned run; delete it when done with it",
                    path,
                    aside.name,
                    written,
                )
                os.rename(path, aside)
            else:
                current.append(path)
        for path in current[self.keep :]:
            log.info("pruning checkpoint %s (keeping the newest %d)", path, self.keep)
            shutil.rmtree(path)
        fsync_dir(self.root)

    def _clean_stale(self) -> None:
        """Remove leftovers of crashed saves; caller holds the lock, so no save is running."""
        for entry in self.root.iterdir():
            if entry.name.startswith(_TMP) and entry.is_dir():
                log.warning("removing %s, left by a save that did not finish", entry)
                shutil.rmtree(entry)
            elif entry.name.startswith(_REPLACED) and entry.is_dir():
                live = self.root / entry.name[len(_REPLACED) :].rsplit("-", 1)[0]
                if live.exists():
                    shutil.rmtree(entry)
                else:
                    log.warning("restoring %s to %s after an interrupted save", entry, live)
                    os.rename(entry, live)
        fsync_dir(self.root)

    # --- reading ----------------------------------------------------------------------------

    def _checkpoint_dirs(self) -> list[tuple[int, Path]]:
        """``(step, directory)`` of every checkpoint, newest step first."""
        found = []
        for entry in self.root.iterdir():
            match = _STEP_DIR.match(entry.name)
            if match and entry.is_dir():
                found.append((int(match.group(1)), entry))
        return sorted(found, reverse=True)
