"""The host loop's checkpoint (:class:`TrainerCheckpoints`, which :class:`wm_jax.trainer.Trainer`
inherits): what it holds besides the train state (replay, normaliser, envs, loop counters, the
policy's memory), when it is due, and resuming from it.  With several processes each one saves its
own replay, envs and policy memory (:class:`wm_jax.checkpoint.ProcessExtras`), the replicated
state is checked to agree before process 0's copy is written, and every process resumes from the
same step or none does.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from wm_jax.metrics import LogWindow
from wm_jax.policy import ActCarry, carry_to_arrays
from wm_jax.run_dir import ResumeRefusedError
from wm_jax.sharding import local_copy
from wm_jax.shell import NonFiniteError, all_finite


@jax.jit
def _fingerprint(tree) -> jax.Array:
    """Per-leaf sums and sums of squares: equal on every process while replicas agree."""
    leaves = [x.astype(jax.numpy.float32) for x in jax.tree.leaves(tree)]
    return jax.numpy.stack([f(x) for x in leaves for f in (jax.numpy.sum, lambda v: (v * v).sum())])


class TrainerCheckpoints:
    """Saving and restoring a :class:`~wm_jax.trainer.Trainer`; reads and writes its fields
    (state, replay, normalizer, envs, act_carry, obs, counters, the log window, checkpointer,
    process_extras, clock) and places a restored state with its ``_placed``."""

    _PROCESS_KEYS = ("replay", "envs", "act_carry")  # what each process owns alone

    def _extras(self) -> dict[str, Any]:
        extras = {
            "replay": self.replay.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "envs": self.envs.state_dict(),
            "loop": {
                "env_step": np.asarray(self.env_step, np.int64),
                "updates": np.asarray(self.updates, np.int64),
                "update_budget": np.asarray(self.update_budget, np.float64),
                "episodes": np.asarray(self.episodes, np.int64),
                # A sentinel first row: orbax cannot save zero-size arrays.
                "eval_returns": np.asarray([(-1.0, 0.0, 0.0), *self.eval_returns], np.float64),
                # The log row in progress: a stop between log steps resumes into the same row.
                "log_window": self.window.state_dict(),
            },
            "act_carry": carry_to_arrays(self.act_carry),
        }
        if self.multiprocess:
            extras["loop"]["process_count"] = np.asarray(self.process_count, np.int64)
        return extras

    def save(self) -> None:
        if self.checkpointer is None:
            return
        # The update guard skips non-finite updates, so this never fires unless something
        # outside it went wrong; a NaN must still never reach a checkpoint.
        if not bool(all_finite(self.state)):
            raise NonFiniteError(
                f"the train state at env step {self.env_step} holds non-finite values; not "
                f"saving it.  The last good checkpoint is env step "
                f"{self.checkpointer.latest_step()} in {self.checkpointer.directory}."
            )
        extras = self._extras()
        if self.multiprocess:
            # Replicas must agree before one of them (process 0's) is written for all.
            multihost_utils.assert_equal(
                _fingerprint(local_copy(self.state)),
                f"the replicated train state differs between processes at env step {self.env_step}",
            )
            self.process_extras.save(self.env_step, {k: extras.pop(k) for k in self._PROCESS_KEYS})
        self.checkpointer.save(self.env_step, self.state, extras)
        self.clock.saved()

    def _save_due(self) -> bool:
        """Every ``checkpoint_every`` env steps, and (one process) once ``checkpoint_seconds``
        passed since the last save: a crash loses at most about that much time.  With several
        processes the decision must be the same everywhere: steps only."""
        before = self.env_step - self.config.num_envs
        return self.clock.checkpoint(before, self.env_step, by_time=not self.multiprocess)

    def _restore(self) -> None:
        load = self._load_everywhere if self.multiprocess else self._load
        self.resumed_from = self.checkpointer.restore_newest_valid(self.state, load)
        if self.resumed_from is None:
            logging.info("no checkpoint in %s: starting from scratch", self.checkpointer.directory)

    def _load_everywhere(self, step: int, state, extras: dict[str, Any]) -> None:
        """:meth:`_load` with this process's own extras; raises on every process unless every
        process loaded ``step`` (so all resume from the same step or all try an older one)."""
        error = None
        try:
            self._check_process_count(step, extras)
            self._load(step, state, {**extras, **self.process_extras.load(step)})
        except Exception as err:  # reported below, after every process has answered
            error = err
        failed = np.asarray(multihost_utils.process_allgather(np.int32(error is not None)))
        if failed.any():
            raise error or RuntimeError(
                f"process(es) {np.flatnonzero(failed).tolist()} could not load their part of "
                f"checkpoint {step}"
            )

    def _check_process_count(self, step: int, extras: dict[str, Any]) -> None:
        saved = int(extras["loop"].get("process_count", 1))
        if saved != self.process_count:  # refused like a changed config (CLI status 6)
            raise ResumeRefusedError(
                f"checkpoint {step} was written by {saved} process(es), this run has "
                f"{self.process_count}: resume it with {saved} (each process's replay and envs "
                "are its own, in checkpoints_process/)"
            )

    def _load(self, step: int, state, extras: dict[str, Any]) -> None:
        """Applies a restored checkpoint; raises (leaving a later load to overwrite) if a part
        does not fit this run."""
        self._check_process_count(step, extras)
        self.replay.load_state_dict(extras["replay"])
        self.normalizer.load_state_dict(extras["normalizer"])
        self.obs = self.envs.load_state_dict(extras["envs"])
        self.envs.guard.take_counts()  # repairs made while replaying were counted before
        loop = extras["loop"]
        self.state = self._placed(state)
        self.env_step = int(loop["env_step"])
        self.updates = int(loop["updates"])
        self.update_budget = float(loop["update_budget"])
        self.episodes = int(loop["episodes"])
        self.act_carry = ActCarry(**{k: np.asarray(v) for k, v in extras["act_carry"].items()})
        rows = np.asarray(loop["eval_returns"])[1:].tolist()  # float64: the step back to int
        self.eval_returns = [(int(step), mean, std) for step, mean, std in rows]
        self.window = LogWindow.from_state_dict(loop.get("log_window"))
        logging.info("resumed from checkpoint at env step %d in %s", step, self.workdir)
