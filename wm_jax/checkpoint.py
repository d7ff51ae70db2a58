"""Checkpoints with orbax: the train state, the replay buffer, the normaliser and the loop's
counters, saved together under ``<workdir>/checkpoints/<step>``.

* orbax writes each step to a temporary directory and renames it when complete, so an interrupted
  save never shows up as a step; leftover temporaries are cleaned on start-up.
* Everything saved is arrays (no pickle): the RNG key is raw ``uint32`` key data, replay and
  normaliser are dicts of numpy arrays, counters are integer arrays.
* Restoring goes against an abstract target built from a fresh init, so the pytree types
  (``TrainState``, optax states) come back as they were saved.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from wm_jax.types import TrainState


def _as_numpy_tree(tree: dict[str, Any]) -> dict[str, Any]:
    return jax.tree.map(np.asarray, tree)


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
        """Saves ``state`` and ``extras`` (a nested dict of numpy arrays / ints) at ``step``."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                extras=ocp.args.StandardSave(_as_numpy_tree(extras)),
            ),
        )

    def restore(
        self, state_template: TrainState, extras_template: dict[str, Any], step: int | None = None
    ) -> tuple[int, TrainState, dict[str, Any]]:
        """Restores ``step`` (default: the newest) against templates with the saved structure."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract_state = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
        abstract_extras = jax.tree.map(
            ocp.utils.to_shape_dtype_struct, _as_numpy_tree(extras_template)
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

    def metadata(self, step: int) -> dict[str, Any]:
        """The saved tree structure (shapes and dtypes) of ``step``, for building templates."""
        return self.manager.item_metadata(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
