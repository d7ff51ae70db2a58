"""Checkpoints with orbax: the train state, the replay buffer, the normaliser and the loop's
counters, saved together under ``<workdir>/checkpoints/<step>``.

* orbax writes each step to a temporary directory and renames it when complete, so an interrupted
  save never shows up as a step; leftover temporaries are cleaned on start-up.
* Everything saved is arrays (no pickle): the RNG key is raw ``uint32`` key data, replay and
  normaliser are dicts of numpy arrays, counters are integer arrays.
* Restoring goes against an abstract target built from a fresh init, so the pytree types
  (``TrainState``, optax states) come back as they were saved.
* :meth:`Checkpointer.restore_newest_valid` walks back from the newest step past unreadable ones
  (truncated files, missing metadata, non-finite values): once an older step loads, the newer
  broken ones are moved to ``<workdir>/checkpoints_corrupt/`` so the run can save over their
  step numbers again.  If no step loads, nothing is moved and the newest step's error is raised
  (a config that no longer matches its checkpoints must not look like corruption); a
  :class:`~wm_jax.run_dir.ResumeRefusedError` from ``load`` (another process count) is raised
  at once.
* Loading never unpickles: orbax reads array data (tensorstore) and JSON metadata only.
* Several processes (``jax.distributed``): every process calls ``save``/``restore`` on the same
  directory; orbax writes the replicated train state once and the ``extras`` item from
  process 0 (its numpy writes are process 0's only), so ``extras`` holds what every process
  shares.  What each process owns alone (its replay, envs, policy memory) goes to
  :class:`ProcessExtras`, one ``.npz`` per step and process next to the orbax steps.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from wm_jax.run_dir import ResumeRefusedError
from wm_jax.types import TrainState


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; names the directory, the cause and the last good
    step."""


def _as_numpy_tree(tree: dict[str, Any]) -> dict[str, Any]:
    return jax.tree.map(np.asarray, tree)


def _disk_bytes(path: str) -> int:
    """Bytes the files under ``path`` take on disk."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except OSError:  # removed meanwhile (orbax deleting an old step)
                pass
    return total


class Checkpointer:
    """Keeps the newest ``max_to_keep`` checkpoints of a run in ``directory``."""

    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            # Declared handlers let a fresh process read a checkpoint's metadata before restoring.
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "extras": ocp.StandardCheckpointHandler(),
            },
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=True,
                cleanup_tmp_directories=True,
                enable_async_checkpointing=async_save,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: TrainState, extras: dict[str, Any]) -> None:
        """Saves ``state`` and ``extras`` (a nested dict of numpy arrays / ints) at ``step``
        (in the background); raises :class:`CheckpointSaveError` if this or the previous
        background save failed."""
        self.check_for_errors()
        self._check_room(step)
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    extras=ocp.args.StandardSave(_as_numpy_tree(extras)),
                ),
            )
        except Exception as err:
            raise self._save_error(err, step) from err

    def _check_room(self, step: int) -> None:
        """Refuses a save the disk visibly cannot hold (less free space than the newest
        checkpoint takes) before orbax starts it: a write that runs out of space fails in
        orbax's threads with hundreds of lines of tracebacks.  One process only (every process
        takes part in a save, so one refusing alone would hang the others)."""
        if jax.process_count() > 1:
            return
        last = self.latest_step()
        if last is None:
            return  # the first save: the start-up check (RunDir.check_free_space) covered it
        needed = _disk_bytes(os.path.join(self.directory, str(last)))
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise self._save_error(
                OSError(
                    f"no space: checkpoint {last} takes {needed / 2**20:.1f} MiB and the disk "
                    f"has {free / 2**20:.1f} MiB free"
                ),
                step,
            )

    def check_for_errors(self) -> None:
        """Raises :class:`CheckpointSaveError` if a background save failed (disk full, ...);
        the checkpoints before it stay valid (orbax renames a step only once complete)."""
        try:
            self.manager.check_for_errors()
        except Exception as err:
            raise self._save_error(err, None) from err

    def _save_error(self, err: Exception, step: int | None) -> CheckpointSaveError:
        text = str(err)
        lowered = text.lower()
        if "no space" in lowered or "resource_exhausted" in lowered or "enospc" in lowered:
            cause = "the disk is full"
        elif "read-only" in lowered or "permission denied" in lowered:
            cause = "the directory cannot be written"
        else:
            cause = type(err).__name__
        last = self.manager.latest_step()
        what = "a checkpoint" if step is None else f"checkpoint {step}"
        return CheckpointSaveError(
            f"saving {what} in {self.directory} failed: {cause} ({text[:300]}). The run "
            f"stopped; the last complete checkpoint is "
            f"{'step ' + str(last) if last is not None else 'none'}, and rerunning the same "
            "command resumes from it once the cause is fixed."
        )

    def restore(
        self, state_template: TrainState, step: int | None = None
    ) -> tuple[int, TrainState, dict[str, Any]]:
        """Restores ``step`` (default: the newest).

        The state is restored against ``state_template`` (so ``TrainState`` and the optax states
        come back as their own types); the extras are plain numpy arrays whose shapes vary with
        the run (eval history, env action histories), so they are restored against the
        checkpoint's own metadata and validated by their owners' ``load_state_dict``.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract_state = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
        abstract_extras = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
            self.manager.item_metadata(step)["extras"],
        )
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                extras=ocp.args.StandardRestore(abstract_extras),
            ),
        )
        extras = jax.tree.map(np.asarray, restored["extras"])
        return step, restored["state"], extras

    def restore_newest_valid(
        self,
        state_template: TrainState,
        load: Callable[[int, TrainState, dict[str, Any]], None],
    ) -> int | None:
        """Restores the newest step that reads, is finite and that ``load`` accepts.

        ``load(step, state, extras)`` applies a restored checkpoint (and raises if its parts do
        not fit).  Returns the step loaded, or None when there is no checkpoint.
        """
        failed: list[tuple[int, Exception]] = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                _, state, extras = self.restore(state_template, step)
                bad = [
                    jax.tree_util.keystr(path)
                    for path, leaf in jax.tree_util.tree_leaves_with_path(state)
                    if np.issubdtype(np.asarray(leaf).dtype, np.floating)
                    and not np.isfinite(np.asarray(leaf)).all()
                ]
                if bad:
                    raise ValueError(f"non-finite values in {bad[:3]}")
                load(step, state, extras)
            except ResumeRefusedError:  # this run cannot continue here at all: not a broken step
                raise
            except Exception as err:  # any failure to read or apply a step makes it unusable
                logging.warning(
                    "checkpoint %d in %s cannot be loaded: %s", step, self.directory, err
                )
                failed.append((step, err))
                continue
            for bad_step, err in failed:
                moved = self._quarantine(bad_step)
                logging.warning(
                    "skipped the unreadable checkpoint %d (%s: %s); moved it to %s and resumed "
                    "from checkpoint %d",
                    bad_step,
                    type(err).__name__,
                    err,
                    moved,
                    step,
                )
            return step
        if failed:
            step, err = failed[0]
            raise RuntimeError(
                f"no checkpoint in {self.directory} could be loaded (tried {[s for s, _ in failed]}"
                f"); the newest failed with {type(err).__name__}: {err}.  If the config changed "
                "since these were written, use the original config or a new --workdir."
            ) from err
        return None

    def _quarantine(self, step: int) -> str:
        """Moves a broken step out of the manager's directory (so its number is free again)."""
        target_root = os.path.join(os.path.dirname(self.directory), "checkpoints_corrupt")
        os.makedirs(target_root, exist_ok=True)
        target = os.path.join(target_root, str(step))
        suffix = 1
        while os.path.exists(target):
            target = os.path.join(target_root, f"{step}.{suffix}")
            suffix += 1
        if jax.process_index() == 0:  # one mover on a shared directory; the others wait
            shutil.move(os.path.join(self.directory, str(step)), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"wm_jax quarantine {step}")
        self.manager.reload()
        return target

    def wait(self) -> None:
        """Waits for a background save; raises :class:`CheckpointSaveError` if it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as err:  # orbax re-raises the save's own error (ENOSPC, ...) here
            raise self._save_error(err, None) from err
        self.check_for_errors()

    def close(self) -> None:
        """Waits for a background save and closes; a failed save was reported by the loop
        (:meth:`check_for_errors`), so here it is only logged."""
        try:
            self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001 - closing after a failure must not raise again
            logging.warning("checkpoint save in %s did not complete: %s", self.directory, err)
        finally:
            try:
                self.manager.close()
            except Exception as err:  # noqa: BLE001
                logging.warning("closing the checkpointer of %s: %s", self.directory, err)


class ProcessExtras:
    """One process's own host state in a multi-process run, one file per checkpoint step:
    ``<directory>/<step>.npz`` (``directory`` is per process, e.g.
    ``<workdir>/checkpoints_process/process_<i>``).

    orbax 0.12's ``NumpyHandler`` writes numpy arrays from process 0 only, so per-process arrays
    (which differ between processes) cannot go through its ``extras`` item.  Each file is
    written to a temporary name, flushed to disk and renamed, so a step's file is complete or
    absent; loading uses ``allow_pickle=False``.  The nested dict is stored flat with
    ``/``-joined keys.
    """

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        self.max_to_keep = max_to_keep
        os.makedirs(self.directory, exist_ok=True)
        for name in os.listdir(self.directory):  # writes cut short by a crash
            if name.endswith(".tmp"):
                os.remove(os.path.join(self.directory, name))

    def path(self, step: int) -> str:
        return os.path.join(self.directory, f"{int(step)}.npz")

    def steps(self) -> list[int]:
        found = (re.fullmatch(r"(\d+)\.npz", name) for name in os.listdir(self.directory))
        return sorted(int(m.group(1)) for m in found if m)

    def save(self, step: int, tree: dict[str, Any]) -> None:
        flat = {
            "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        }
        final = self.path(step)
        tmp = final + ".tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **flat)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        # Files of later steps belong to a timeline this run resumed before (stale); of the
        # rest keep one more than orbax keeps (its newest save may still be in flight).
        kept = [s for s in self.steps() if s <= step]
        for s in [s for s in self.steps() if s > step] + kept[: -(self.max_to_keep + 1)]:
            os.remove(self.path(s))

    def load(self, step: int) -> dict[str, Any]:
        """The tree saved at ``step``; raises FileNotFoundError if this process has none."""
        tree: dict[str, Any] = {}
        with np.load(self.path(step), allow_pickle=False) as data:
            for name in data.files:
                *parents, leaf = name.split("/")
                node = tree
                for key in parents:
                    node = node.setdefault(key, {})
                node[leaf] = data[name]
        return tree
