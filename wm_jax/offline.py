"""Offline training and imagination-only fine-tuning: learn from a fixed dataset, no env steps.

    import wm_jax
    from wm_jax.offline import train_offline

    config = wm_jax.get_config()
    config.offline.updates = 20_000
    # World model first, then actor and critic in imagination, from another run's replay:
    train_offline(config, "runs/offline", dataset="run:runs/cartpole")
    # ... or from a minari dataset (pip install "minari[hdf5]"; `minari download <id>` first):
    train_offline(config, "runs/offline_minari", dataset="minari:cartpole/random-v0")
    # Imagination-only fine-tuning: the run's world model stays frozen, actor and critic go on
    # (the config must build the run's networks: start from the config the run was trained with).
    config.offline.freeze_world_model = True
    train_offline(config, "runs/finetuned", dataset="run:runs/cartpole")
    policy = wm_jax.load_policy("runs/finetuned")  # as for an online run

or from the shell::

    python -m wm_jax.offline --config=experiments/configs/cartpole.py --workdir=runs/offline \\
        --dataset=run:runs/cartpole [--freeze_world_model]
    python -m wm_jax.offline --workdir=runs/offline_minari --dataset=minari:cartpole/random-v0

A dataset (:mod:`wm_jax.offline_data`) fills a :class:`~wm_jax.replay.ReplayBuffer`, so
batches are sampled as in the online loop; training creates no env.  Every
``offline.eval_every`` updates the agent is evaluated in the env the dataset names, when that env
fits the dataset's spaces (else one warning).  This module is the loop and the command line; the
schedule in updates and the config checks are :mod:`wm_jax.offline_config`.  The observation
normaliser is fitted on the whole dataset once (a frozen world model keeps the run's own).

Metrics, checkpoints, ``config.json`` and ``env_spec.json`` are written as by the online trainer
(``load_policy``, ``wm_jax.evaluate`` and ``wm_jax.report`` work on an offline workdir; the
``env_step`` of its ``metrics.jsonl`` counts updates).  A rerun with the same ``--workdir`` and
dataset resumes from the newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import sys
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging

from wm_jax import metrics as metrics_lib
from wm_jax.checkpoint import Checkpointer
from wm_jax.config import (
    ConfigError,
    check_known_fields,
    check_wandb_installed,
    validate,
)
from wm_jax.diagnostics import Detector, Thresholds
from wm_jax.envs import (
    EvaluationStopped,
)
from wm_jax.episode_video import EpisodeRecorder
from wm_jax.inference import spec_to_json
from wm_jax.normalizer import RunningMeanStd
from wm_jax.offline_config import (
    check_workdir,
    offline_agent_config,
    offline_counts,
    offline_schedule,
    prepare_config,
)
from wm_jax.offline_data import (
    Dataset,
    DatasetError,
    episodes_to_replay,
    load_dataset,
    load_minari_dataset,
    load_run_dataset,
    parse_dataset,
    read_json,
    restore_run_state,
    stored_observations,
)
from wm_jax.open_loop import make_open_loop_fn
from wm_jax.policy import make_act_fn
from wm_jax.run_dir import RunDir, atomic_write, tree_bytes
from wm_jax.safe_load import UntrustedImportError
from wm_jax.schedule import critic_real_mix, phase
from wm_jax.shell import (
    Clock,
    NonFiniteError,
    StopOnSignal,
    all_finite,
    check_nonfinite,
    keep_episode_returns,
    open_loop_check,
    prepare_batch_jit,
    sample_batch,
    write_config_text,
)
from wm_jax.trainer import LOG_KEYS as TRAINER_LOG_KEYS
from wm_jax.training_eval import env_problem, eval_row, evaluate, video_due, write_clip
from wm_jax.types import TrainState
from wm_jax.update import make_agent, make_steps

# The dataset and schedule names are re-exported from wm_jax.offline_data and
# wm_jax.offline_config, where they now live.
__all__ = [
    "Dataset",
    "DatasetError",
    "OfflineResult",
    "OfflineTrainer",
    "episodes_to_replay",
    "load_dataset",
    "load_minari_dataset",
    "load_run_dataset",
    "offline_agent_config",
    "offline_counts",
    "offline_schedule",
    "parse_dataset",
    "restore_run_state",
    "train_offline",
]

# The online loop's log keys, less those that need an environment.
LOG_KEYS = tuple(
    k for k in TRAINER_LOG_KEYS if k not in ("eval_return", "train_return", "env_steps_per_s")
) + ("updates_per_s",)


@dataclasses.dataclass
class OfflineResult:
    """What :func:`train_offline` returns: where the run is, how far it got, its final state."""

    workdir: str
    updates: int
    resumed_from: int | None
    state: TrainState
    interrupted_by: int | None = None  # the signal (SIGTERM/SIGINT) that stopped the run early


# -- the loop ----------------------------------------------------------------------------------


class OfflineTrainer:
    """Owns the dataset's replay, the fitted normaliser, jitted steps and checkpointer of one
    offline run; :meth:`run` trains without ever creating an environment."""

    def __init__(
        self,
        config,
        workdir: str,
        dataset: str | Dataset,
        allow_imports: str | list[str] | None = None,
    ):
        check_known_fields(config)
        check_wandb_installed(config)
        validate(config)  # before reading a possibly large dataset
        data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
        self.workdir = os.path.abspath(workdir)
        if data.run_dir is not None and data.run_dir == self.workdir:
            raise ConfigError(
                f"--workdir: {self.workdir} is the dataset's own run; write the offline run to "
                "a new --workdir"
            )
        self.config = c = prepare_config(config, data, allow_imports)
        self.data, self.spec, self.replay = data, data.spec, data.replay
        keep_episode_returns(self.replay, c)
        self.schedule = offline_schedule(c)
        # One run per workdir, and a resume checked before anything is written.
        self.run_dir = RunDir.open(self.workdir, c, spec_to_json(self.spec))
        self.checkpointer = None
        try:
            check_workdir(self.workdir, self.data)
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        c = self.config
        self.agent = make_agent(offline_agent_config(c), self.spec)
        self.steps = make_steps(self.agent)
        self.open_loop_fn = make_open_loop_fn(self.agent)
        self.act_fn = make_act_fn(self.agent)  # evaluation in the dataset's env
        self.video = EpisodeRecorder(c.env_id, dict(c.env_kwargs))
        self._eval_problem: str | None = None  # why the env cannot evaluate (checked once)
        self.normalizer = RunningMeanStd(
            self.spec.obs_shape,
            enabled=c.obs_norm and not np.issubdtype(self.spec.obs_dtype, np.integer),
        )
        self.state = self.steps.init(jax.random.fold_in(jax.random.PRNGKey(c.seed), 1))
        self.updates = 0
        self.window = metrics_lib.LogWindow()  # the log row in progress (checkpointed)
        self.detector = Detector(Thresholds.from_config(c))
        # One checkpoint (the state and the dataset's replay) must fit on the workdir's disk.
        self.run_dir.check_free_space(tree_bytes(self.state) + self.replay.nbytes)
        self.checkpointer = Checkpointer(
            os.path.join(self.workdir, "checkpoints"), c.keep_checkpoints
        )
        self.resumed_from = self.checkpointer.restore_newest_valid(self.state, self._load)
        if self.resumed_from is None:
            self._start()
        self._write_metadata()
        self._purge_step = self.run_dir.continue_logs(self.resumed_from)
        self.clock = Clock.offline(c)

    def _start(self) -> None:
        """A fresh start: the normaliser from the dataset, or for fine-tuning the run's state
        and the normaliser its world model was trained with."""
        data = self.data
        if not self.config.offline.freeze_world_model:
            if self.normalizer.enabled:  # (off for uint8 images: no need to copy them)
                self.normalizer.update(stored_observations(self.replay))
            return
        self.normalizer.load_state_dict(data.run_normalizer)
        try:
            self.state = restore_run_state(data.run_dir, data.run_step, self.state)
        except Exception as err:  # orbax names a leaf whose shape does not match
            run_config = read_json(os.path.join(data.run_dir, "config.json"))
            differ = [
                f"model.{k}={v!r} (the run's: {run_config.get('model', {}).get(k)!r})"
                for k, v in self.config.model.to_dict().items()
                if run_config.get("model", {}).get(k) != v
            ]
            raise ConfigError(
                f"config.model: the checkpoint {data.run_step} of {data.run_dir} does not fit "
                f"this config's networks ({', '.join(differ) or type(err).__name__ + ': '}"
                f"{'' if differ else str(err)[:300]}); fine-tune with the config that run was "
                f"trained with (see {data.run_dir}/config.json)"
            ) from err
        logging.info(
            "fine-tuning actor and critic of %s (checkpoint %d) with its world model frozen",
            data.run_dir,
            data.run_step,
        )

    def _load(self, step: int, state: TrainState, extras: dict[str, Any]) -> None:
        """Applies one of this run's own checkpoints (resume)."""
        self.replay.load_state_dict(extras["replay"])
        self.normalizer.load_state_dict(extras["normalizer"])
        self.state = state
        self.updates = int(extras["loop"]["updates"])
        self.window = metrics_lib.LogWindow.from_state_dict(extras["loop"].get("log_window"))
        logging.info("resumed from checkpoint at update %d in %s", step, self.workdir)

    def _write_metadata(self) -> None:
        self.run_dir.write_run_files(self.config, spec_to_json(self.spec))  # for load_policy
        meta = {
            "dataset": self.data.source,
            "run_step": self.data.run_step,
            "transitions": len(self.replay),
            "freeze_world_model": bool(self.config.offline.freeze_world_model),
        }
        atomic_write(os.path.join(self.workdir, "offline.json"), json.dumps(meta, indent=1))

    def save(self) -> None:
        """A checkpoint in the online trainer's layout (state + replay, normaliser, counters),
        so the workdir also serves as a ``run:`` dataset; there is no env state to save."""
        if not bool(all_finite(self.state)):
            raise NonFiniteError(
                f"the train state at update {self.updates} holds non-finite values; not saving "
                f"it.  The last good checkpoint is update {self.checkpointer.latest_step()} in "
                f"{self.checkpointer.directory}."
            )
        extras = {
            "replay": self.replay.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            # The log row in progress: a stop between log steps resumes into the same row.
            "loop": {
                "updates": np.asarray(self.updates, np.int64),
                "log_window": self.window.state_dict(),
            },
        }
        self.checkpointer.save(self.updates, self.state, extras)
        self.clock.saved()

    def _log(self, writer, elapsed: float, done: int) -> None:
        c = self.config
        record: dict[str, Any] = self.window.means()
        record["updates_per_s"] = done / max(elapsed, 1e-9)
        record["updates"] = self.updates
        record["phase"] = phase(self.updates, self.schedule)
        if self.clock.open_loop(self.updates):
            check = open_loop_check(
                self.open_loop_fn, self.state.wm_params, self.replay, self.normalizer, c,
                self.updates, self.workdir, writer,
            )  # fmt: skip
            record.update(check or {})
        self.detector.update(writer.write(self.updates, record))
        metrics_lib.log_line(self.updates, record, LOG_KEYS)

    def _evaluate(self, writer, should_stop) -> None:
        """Evaluates in the dataset's env (``offline.eval_every``): the host loop's episodes and
        ``eval_return`` row, at the update count; off, with one warning, without a usable env."""
        c, o = self.config, self.config.offline
        if self._eval_problem is None:
            self._eval_problem = env_problem(self.data.env_id, c.env_kwargs, self.spec) or ""
            if self._eval_problem:
                logging.warning("offline evaluation is off: %s", self._eval_problem)
        if self._eval_problem:
            return
        recorder = self.video if video_due(o.eval_video_every, o.eval_every, self.updates) else None
        logging.debug("evaluating %d episodes at update %d", c.eval_episodes, self.updates)
        mean, std, _ = evaluate(
            c,
            self.act_fn,
            self.state,
            self.normalizer,
            c.eval_episodes,
            seed=c.seed + 100_000 + self.updates,
            should_stop=should_stop,
            recorder=recorder if self.video.available else None,
        )
        self.detector.update(writer.write(self.updates, eval_row(mean, std, c.eval_episodes)))
        write_clip(writer, recorder if self.video.available else None, self.updates)
        metrics_lib.log_line(self.updates, {"eval_return": mean}, ("eval_return",))

    def run(self, stop_at: int | None = None) -> OfflineResult:
        """Trains until ``offline.updates`` (or ``stop_at``, to simulate an interruption)."""
        c, o = self.config, self.config.offline
        end = o.updates if stop_at is None else min(stop_at, o.updates)
        mean, std = self.normalizer.stats()  # fixed: fitted once on the dataset
        reward_scale = np.float32(c.reward_scale)
        writer = metrics_lib.MetricsWriter(self.workdir, purge_step=self._purge_step, config=c)
        if self._purge_step is not None and self.resumed_from is None:
            write_config_text(writer, c)
        self._purge_step = None  # a later run() call continues this process's own events
        last_time, last_updates = time.time(), self.updates
        stop = StopOnSignal()
        try:
            stop.__enter__()
            while self.updates < end and stop.signum is None:
                counts = offline_counts(self.updates, c, self.schedule)
                mix = np.float32(critic_real_mix(self.updates, self.schedule))
                batch = sample_batch(self.replay, c, self.updates)
                batch = prepare_batch_jit(batch, mean, std, reward_scale)
                self.state, metrics = self.steps.train_step(self.state, batch, counts, mix)
                self.updates += 1
                self.window.add(metrics)
                # Every update, as the host loop does: the limit holds between log rows too.
                check_nonfinite(self.state, c, self.updates, self.checkpointer, "update")
                before = self.updates - 1
                if self.clock.evaluate(before, self.updates):
                    try:
                        self._evaluate(writer, lambda: bool(stop.signum))
                    except EvaluationStopped:  # a signal: abandon it, save and stop
                        break
                if self.clock.log(before, self.updates) or self.updates == o.updates:
                    now = time.time()
                    self._log(writer, now - last_time, self.updates - last_updates)
                    self.window = metrics_lib.LogWindow()
                    last_time, last_updates = now, self.updates
                if self.clock.checkpoint(before, self.updates):
                    self.save()
            # Stopped by a signal between log rows: the row in progress goes into the final
            # checkpoint and is written, whole, by the resumed run at its log step.
        except NonFiniteError:
            if self.window:  # leave the skipped updates on record before stopping
                writer.write(self.updates, self.window.means())
            raise
        finally:
            stop.__exit__()
            writer.close()
        if stop.signum is not None:
            logging.warning(
                "stopped by %s at update %d; saving a final checkpoint",
                signal.Signals(stop.signum).name,
                self.updates,
            )
        if self.checkpointer.latest_step() != self.updates:
            self.save()
        self.checkpointer.wait()
        if c.report and self.updates >= o.updates and stop.signum is None:
            from wm_jax.report import write_report  # matplotlib only when a report is written

            logging.info("report: %s", write_report(self.workdir))
        return OfflineResult(self.workdir, self.updates, self.resumed_from, self.state, stop.signum)

    def close(self) -> None:
        """Closes the checkpointer and releases the workdir's lock; idempotent."""
        try:
            if self.checkpointer is not None:
                self.checkpointer.close()
        finally:
            self.run_dir.close()


def train_offline(
    config,
    workdir: str,
    dataset: str | Dataset,
    stop_at: int | None = None,
    allow_imports: str | list[str] | None = None,
) -> OfflineResult:
    """Trains from ``dataset`` (``"run:<workdir>"``, ``"minari:<id>"`` or a :class:`Dataset`)
    for ``config.offline.updates`` updates without creating an environment; resumes from the
    newest checkpoint in ``workdir``.  A ``module:EnvId`` env id recorded in the dataset is
    made for evaluation only if ``allow_imports`` names its module (see :mod:`wm_jax.safe_load`).

    Example::

        config = wm_jax.get_config()
        config.offline.updates = 5_000
        result = train_offline(config, "runs/offline", "minari:cartpole/random-v0")
        policy = wm_jax.load_policy(result.workdir)
    """
    trainer = OfflineTrainer(config, workdir, dataset, allow_imports)
    try:
        return trainer.run(stop_at)
    finally:
        trainer.close()


# -- command line ------------------------------------------------------------------------------


def _define_flags() -> None:
    """The CLI's flags, defined only when run as a program: a library import must not claim
    absl flag names (--config, --workdir, --seed) that other entry points define too."""
    from wm_jax import cli
    from wm_jax import config as config_module

    cli.define_config_flag(config_module.__file__)
    flags.DEFINE_string("workdir", None, "Directory of the offline run (required).")
    flags.DEFINE_string(
        "dataset", None, "run:<workdir of an earlier run> or minari:<dataset_id> (required)."
    )
    flags.DEFINE_bool(
        "freeze_world_model",
        False,
        "Imagination-only fine-tuning of a run: sets config.offline.freeze_world_model.",
    )
    flags.DEFINE_integer("seed", None, "Overrides config.seed.")
    flags.DEFINE_list(
        "allow_imports",
        [],
        "Modules the dataset names (a module:EnvId env) that may be imported; importing runs "
        "their code, so only name modules you trust.",
    )


def main(argv):
    from wm_jax import cli

    if len(argv) > 1:
        cli.usage_exit(f"unexpected arguments: {argv[1:]}")

    cli.start()
    FLAGS = flags.FLAGS
    for flag in ("workdir", "dataset"):
        if not FLAGS[flag].value:
            cli.usage_exit(f"--{flag} is required")
    config = FLAGS.config
    with config.unlocked():
        if FLAGS.seed is not None:
            config.seed = FLAGS.seed
        if FLAGS.freeze_world_model:
            config.offline.freeze_world_model = True
    try:
        result = cli.run_with_exit_statuses(
            lambda: train_offline(
                config, FLAGS.workdir, FLAGS.dataset, allow_imports=FLAGS.allow_imports
            ),
            FLAGS.workdir,
        )
    except (DatasetError, UntrustedImportError) as err:
        cli.usage_exit(f"--dataset: {err}")
    except ImportError as err:
        cli.usage_exit(str(err))
    workdir = os.path.abspath(FLAGS.workdir)
    if result.interrupted_by is not None:
        name = signal.Signals(result.interrupted_by).name
        print(
            f"interrupted by {name} at update {result.updates}; a final checkpoint is in "
            f"{workdir}/checkpoints: rerun the same command to resume",
            file=sys.stderr,
        )
        sys.exit(128 + result.interrupted_by)
    print(f"trained {result.updates} offline updates from {FLAGS.dataset}")
    print(
        f"results in {workdir} (metrics.jsonl, tensorboard/, checkpoints/); evaluate with "
        f"python -m wm_jax.evaluate --workdir={shlex.quote(workdir)}"
    )


def run():
    """Console-script entry point (``wm-jax-offline``)."""
    _define_flags()
    from wm_jax.cli import parse_flags

    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
