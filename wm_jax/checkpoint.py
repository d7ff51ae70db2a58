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

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
