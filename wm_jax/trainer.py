"""The training loop: act in vectorized gymnasium envs, store, train, evaluate, log, checkpoint.

Randomness is derived from counters (``fold_in(seed_key, env_step)`` for acting, a
``SeedSequence([seed, update])`` for replay sampling), so the only RNG state is the ``TrainState``
key and a resumed run draws exactly what the uninterrupted one would have drawn.

Several processes (``jax.distributed``, e.g. one per host or GPU; README "Multi-host"): the
settings stay global.  Each of ``P`` processes runs ``num_envs / P`` envs seeded with
:func:`process_seed`, keeps its own replay (``replay_capacity / P``) and samples
``batch_size / P`` rows per update (its own streams: the process index is folded into the
acting key and the sampling seed); :func:`wm_jax.sharding.shard_batch` joins the rows into the
global batch of the unchanged jitted train step, whose state is initialised from the same key and
stays replicated.  ``env_step`` counts the env steps of all processes (``num_envs`` per vector
step, as in one process) and is the same everywhere, as are the normaliser (fed with every
process's observations) and the decision to train, evaluate, checkpoint or stop: one small
all-gather per vector step keeps them in step.  Process 0 alone evaluates (its result is
broadcast), writes metrics, TensorBoard, the report and ``config.json``; every process saves
checkpoints (:mod:`wm_jax.trainer_checkpoint`: what a checkpoint holds, saving, resuming).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from wm_jax import metrics as metrics_lib
from wm_jax.ahead import AheadStep
from wm_jax.checkpoint import Checkpointer, ProcessExtras
from wm_jax.config import (
    ConfigError,
    check_known_fields,
    check_wandb_installed,
    validate,
    validate_for_env,
)
from wm_jax.diagnostics import Detector, Thresholds
from wm_jax.env_make import make_env_spec
from wm_jax.episode_video import EpisodeRecorder
from wm_jax.inference import best_return, keep_if_best, spec_to_json
from wm_jax.normalizer import RunningMeanStd
from wm_jax.open_loop import make_open_loop_fn
from wm_jax.policy import acting_key, episode_starts, initial_carry, make_act_fn, prefill_actions
from wm_jax.replay import ReplayBuffer
from wm_jax.run_dir import RunDir, tree_bytes
from wm_jax.schedule import critic_real_mix, later_counts, phase, update_counts
from wm_jax.sharding import commit, local_copy, make_mesh, replicate, shard_batch
from wm_jax.shell import (
    Clock,
    NoBar,
    NonFiniteError,
    NoWriter,
    RunResult,
    StopOnSignal,
    check_nonfinite,
    keep_episode_returns,
    open_loop_check,
    prepare_batch_jit,
    progress_bar,
    sample_batch,
    write_config_text,
)
from wm_jax.trainer_checkpoint import TrainerCheckpoints
from wm_jax.training_eval import eval_row, evaluate, make_envs, video_due, write_clip
from wm_jax.update import make_agent, make_steps
from wm_jax.vector_env import EnvStepError, EvaluationStopped

LOG_KEYS = (
    "eval_return",
    "train_return",
    "world_model_loss",
    "dynamics_loss",
    "reward_mae",
    "continue_accuracy",
    "mean_imagined_return",
    "entropy",
    "critic_loss",
    "env_steps_per_s",
)


def process_seed(seed: int, process_index: int) -> int:
    """The env seed of process ``process_index`` in a multi-process run: 63 bits of
    ``SeedSequence([seed, process_index])``, so processes never share an episode seed."""
    return int(np.random.SeedSequence([seed, process_index]).generate_state(1, np.uint64)[0] >> 1)


class Trainer(TrainerCheckpoints):
    """Owns the envs, replay, normaliser, jitted steps and checkpointer of one run."""

    def __init__(self, config, workdir: str):
        check_known_fields(config)
        check_wandb_installed(config)
        self.config = validate(config)
        self.workdir = os.path.abspath(workdir)
        c = self.config
        try:
            self.spec = make_env_spec(c.env_id, dict(c.env_kwargs))
        except ValueError as err:  # unknown id or unsupported spaces: a start-up config error
            raise ConfigError(f"config.env_id={c.env_id!r}: {err}") from err
        validate_for_env(c, self.spec.max_episode_steps)
        # Several processes (jax.distributed): each runs num_envs / P envs and samples
        # batch_size / P rows; process 0 (the lead) evaluates and writes the logs.
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        self.multiprocess = self.process_count > 1
        self.lead = self.process_index == 0
        self.stream = (self.process_index,) if self.multiprocess else ()
        for field in ("num_envs", "batch_size"):
            if c[field] % self.process_count:
                raise ConfigError(
                    f"config.{field}: {c[field]} does not split over {self.process_count} "
                    f"processes (it is global: each process takes {field} / process count); "
                    f"use a multiple of {self.process_count}"
                )
        self.local_envs = c.num_envs // self.process_count
        # One run per workdir, and a resume checked before anything is written.
        spec_json = spec_to_json(self.spec)
        self.run_dir = RunDir.open(self.workdir, c, spec_json, self.process_index)
        try:
            self._build(spec_json)
        except BaseException:
            self.close()
            raise

    def _build(self, spec_json: dict[str, Any]) -> None:
        c = self.config
        self.envs = self.checkpointer = None  # what close() releases, once built
        self.agent = make_agent(c, self.spec)
        self.steps = make_steps(self.agent)
        self.ahead = AheadStep(self.steps.train_step)  # later phases' programs compile early
        self.act_fn = make_act_fn(self.agent, self.local_envs)
        self.open_loop_fn = make_open_loop_fn(self.agent)
        env_seed = process_seed(c.seed, self.process_index) if self.multiprocess else c.seed
        self.envs = make_envs(c, self.local_envs, env_seed, c.vector_mode)
        spec = self.spec
        capacity = c.replay_capacity // self.process_count
        self.replay = ReplayBuffer(
            capacity, self.local_envs, spec.obs_shape, spec.obs_dtype, spec.action_dim
        )
        keep_episode_returns(self.replay, c)
        self.normalizer = RunningMeanStd(
            self.spec.obs_shape,
            enabled=c.obs_norm and not np.issubdtype(self.spec.obs_dtype, np.integer),
        )
        self.seed_key = jax.random.PRNGKey(c.seed)
        # Data parallelism: replicated state, batches split over every device (jax.sharding);
        # always on with several processes.
        self.mesh = make_mesh() if c.data_parallel or self.multiprocess else None
        if self.mesh is not None and c.batch_size % self.mesh.size:
            raise ConfigError(
                f"config.batch_size: {c.batch_size} does not split over {self.mesh.size} devices "
                f"(config.data_parallel=True or several processes); use a multiple of "
                f"{self.mesh.size}"
            )
        self.state = self._placed(self.steps.init(jax.random.fold_in(self.seed_key, 1)))
        self.env_step = 0
        self.updates = 0
        self.update_budget = 0.0
        self.episodes = 0
        self.eval_returns: list[tuple[int, float, float]] = []
        self.window = metrics_lib.LogWindow()  # the log row in progress (checkpointed)
        self.replay_ready = False  # every process's replay holds a batch's windows
        self.resumed_from = None
        self.detector = Detector(Thresholds.from_config(c))
        if c.checkpoint_every:  # one checkpoint must fit on the workdir's disk
            self.run_dir.check_free_space(tree_bytes(self.state) + self.replay.nbytes)
        self.run_dir.write_run_files(c, spec_json)
        self.obs = self.envs.reset()
        # The policy's memory between steps (the RSSM's state; unused by the other models).
        self.act_carry = initial_carry(self.agent, self.local_envs)
        # After the checks: orbax's close() does not wait for the clean-up thread this starts.
        self.checkpointer = (
            Checkpointer(os.path.join(self.workdir, "checkpoints"), c.keep_checkpoints)
            if c.checkpoint_every
            else None
        )
        # Each process's own replay, envs and policy memory (orbax saves process 0's only).
        self.process_extras = (
            ProcessExtras(
                os.path.join(self.workdir, "checkpoints_process", f"process_{self.process_index}"),
                c.keep_checkpoints,
            )
            if self.checkpointer is not None and self.multiprocess
            else None
        )
        if self.checkpointer is not None:
            self._restore()
        # Log rows after the restored step were never checkpointed: drop them (and purge them
        # from TensorBoard) so every step is logged once.
        self._purge_step = self.run_dir.continue_logs(self.resumed_from)
        self.best_return = best_return(self.workdir)
        self.clock = Clock.online(self.config)
        # Now and then one evaluation episode as a video (config.eval_video_every).
        self.video = EpisodeRecorder(c.env_id, dict(c.env_kwargs))
        self._recorder = None

    def _placed(self, state):
        return commit(state) if self.mesh is None else replicate(state, self.mesh)

    # -- the loop ------------------------------------------------------------------------------

    def _act(self) -> np.ndarray:
        c = self.config
        key = acting_key(
            self.seed_key,
            np.uint32(self.env_step),
            self.process_index if self.multiprocess else None,
        )
        if self.env_step < c.prefill_steps:
            actions, self.act_carry = prefill_actions(
                c, self.spec, self.act_carry, key, [c.seed, self.env_step, 7, *self.stream]
            )
            return actions
        mean, std = self.normalizer.stats()
        actions, self.act_carry = self.act_fn(
            local_copy(self.state.wm_params),
            local_copy(self.state.actor_params),
            self.act_carry,
            self.obs,
            mean,
            std,
            key,
            deterministic=False,
            correlated=self.act_fn.correlated_at(self.env_step),
        )
        return np.asarray(actions)

    def _step_envs(self, actions):
        try:
            return self.envs.step(actions)
        except EnvStepError as err:
            last = self.checkpointer.latest_step() if self.checkpointer is not None else None
            raise EnvStepError(
                f"{err} (at env step {self.env_step}; "
                + (
                    f"the last good checkpoint is env step {last} in {self.checkpointer.directory}"
                    ": rerunning the same command resumes from it)"
                    if last is not None
                    else "no checkpoint was written yet)"
                )
            ) from err

    def _sample(self):
        rows = self.config.batch_size // self.process_count
        return sample_batch(self.replay, self.config, self.updates, rows, self.stream)

    def _replay_need(self) -> int:
        c = self.config
        return c.sequence_length if c.sequence_mode else 1

    def _ready_to_train(self) -> bool:
        # With several processes every process's replay must be ready (agreed in _exchange).
        ready = self.replay_ready if self.multiprocess else len(self.replay) >= self._replay_need()
        return self.env_step >= self.config.prefill_steps and ready

    def _exchange(self, out, signum: int | None):
        """The per-vector-step agreement of a multi-process run, one all-gather of a small
        float32 vector per process: its observations (for the shared normaliser), finished
        episodes and their return sum, a stop signal, and whether its replay can be sampled.
        Returns ``(observations of all processes, episodes, return sum, signal)``."""
        obs = out.transition.obs
        own = np.asarray(obs, np.float32).reshape(-1) if self.normalizer.enabled else []
        flags = [
            len(out.episode_returns),
            float(np.sum(out.episode_returns)),
            signum or 0,
            min(len(self.replay), self._replay_need()),
        ]
        rows = np.asarray(multihost_utils.process_allgather(np.concatenate([own, flags])))
        all_obs = rows[:, :-4].reshape(-1, *obs.shape[1:]) if self.normalizer.enabled else obs
        episodes, returns, signals, ready = rows[:, -4:].T
        self.replay_ready = bool(ready.min() >= self._replay_need())
        agreed = int(signals.max()) or None
        return all_obs, int(episodes.sum()), float(returns.sum()), agreed

    def _train(self) -> None:
        c = self.config
        counts = update_counts(self.env_step, c.schedule)
        mix = np.float32(critic_real_mix(self.env_step, c.schedule))
        mean, std = self.normalizer.stats()
        batch = self._sample()
        if self.mesh is not None:  # this process's rows become its part of the global batch
            batch = shard_batch(batch, self.mesh)
        batch = prepare_batch_jit(batch, mean, std, np.float32(c.reward_scale))
        self.state, metrics = self.ahead.step(self.state, batch, counts, mix)
        self.updates += 1
        self.window.add(metrics)

    def open_loop_check(self, writer=None) -> dict[str, Any] | None:
        """The open-loop prediction check at the current env step (see :func:`open_loop_check`);
        ``writer`` gets its TensorBoard image."""
        return open_loop_check(
            self.open_loop_fn,
            local_copy(self.state.wm_params),
            self.replay,
            self.normalizer,
            self.config,
            self.env_step,
            self.workdir,
            writer,
        )

    def _check_nonfinite(self) -> None:
        check_nonfinite(self.state, self.config, self.env_step, self.checkpointer)

    def run(self, stop_at: int | None = None) -> RunResult:
        """Trains until ``config.total_env_steps`` (or ``stop_at``, to simulate an interruption)."""
        c = self.config
        end = c.total_env_steps if stop_at is None else min(stop_at, c.total_env_steps)
        # Process 0 alone writes metrics, TensorBoard and log lines.
        writer = (
            metrics_lib.MetricsWriter(self.workdir, purge_step=self._purge_step, config=c)
            if self.lead
            else NoWriter()
        )
        if self._purge_step is not None and self.resumed_from is None:
            write_config_text(writer, c)
        self._purge_step = None  # a later run() call continues this process's own events
        bar = progress_bar(end, self.env_step) if self.lead else NoBar()
        self.ahead.expect(later_counts(self.env_step, end, c.schedule))
        last_time, last_step = time.time(), self.env_step
        stop = self._stop = StopOnSignal()
        signum = None  # the signal that stops the run (of any process, with several)
        try:
            stop.__enter__()
            while self.env_step < end and signum is None:
                actions = self._act()
                out = self._step_envs(actions)
                self.replay.add(*out.transition)
                if self.multiprocess:
                    obs, episodes, returns, signum = self._exchange(out, stop.signum)
                else:
                    obs, episodes, returns = out.transition.obs, len(out.episode_returns), None
                    signum = stop.signum
                self.normalizer.update(obs)
                self.obs = out.obs
                done = out.transition.terminated | out.transition.truncated
                self.act_carry = episode_starts(self.act_carry, done)
                self.env_step += c.num_envs
                self.episodes += episodes
                self.window.add_returns(
                    sum(out.episode_returns) if returns is None else returns, episodes
                )
                if self._ready_to_train():
                    self.update_budget += c.num_envs * c.train_ratio
                    trained = self.update_budget >= 1.0
                    while self.update_budget >= 1.0:
                        self._train()
                        self.update_budget -= 1.0
                    if trained:
                        self._check_nonfinite()
                before = self.env_step - c.num_envs
                if self.clock.evaluate(before, self.env_step):
                    try:
                        mean, std = self._evaluate()
                    except EvaluationStopped:  # a signal: abandon it, save and stop
                        signum = stop.signum
                        break
                    self.eval_returns.append((self.env_step, mean, std))
                    if self.lead:
                        row = eval_row(mean, std, c.eval_episodes)
                        self.detector.update(writer.write(self.env_step, row))
                        write_clip(writer, self._recorder, self.env_step)
                        self._keep_if_best(mean, std)
                    bar.set_postfix(eval_return=f"{mean:.1f}")
                if self.clock.log(before, self.env_step):
                    now = time.time()
                    if self.lead:  # process 0 alone logs
                        rate = (self.env_step - last_step) / max(now - last_time, 1e-9)
                        self._log(writer, rate)
                    self.window = metrics_lib.LogWindow()
                    last_time, last_step = now, self.env_step
                if self._save_due():
                    self.save()
                elif self.checkpointer is not None:
                    self.checkpointer.check_for_errors()  # a failed background save stops now
                bar.update(c.num_envs)
        except NonFiniteError:
            # Leave the skipped updates on record before stopping (the detector reads them).
            if self.window:
                writer.write(self.env_step, self.window.means())
            raise
        finally:
            stop.__exit__()
            bar.close()
            writer.close()
        if signum is not None:
            logging.warning(
                "stopped by %s at env step %d; %s",
                signal.Signals(signum).name,
                self.env_step,
                "saving a final checkpoint" if self.checkpointer else "checkpoints are off",
            )
        if self.checkpointer is not None:
            if self.checkpointer.latest_step() != self.env_step:
                self.save()
            self.checkpointer.wait()
        if c.report and self.env_step >= c.total_env_steps and signum is None and self.lead:
            from wm_jax.report import write_report  # matplotlib only when a report is written

            logging.info("report: %s", write_report(self.workdir))
        return RunResult(
            self.workdir, self.env_step, list(self.eval_returns), self.resumed_from, signum
        )

    def _log(self, writer, env_steps_per_s: float) -> None:
        """Writes one log record: the window's update metrics and episode returns."""
        c = self.config
        record = self.window.means()
        record["env_steps_per_s"] = env_steps_per_s
        record["updates"] = self.updates
        record["episodes"] = self.episodes
        record["phase"] = phase(self.env_step, c.schedule)
        if c.env_check == "sanitize":
            repaired = self.envs.guard.take_counts()
            if any(repaired.values()):
                logging.warning(
                    "env step %d: repaired invalid env data %s (config.env_check=sanitize)",
                    self.env_step,
                    repaired,
                )
            record.update(repaired)
        if self.window.episodes:
            record["train_return"] = self.window.return_sum / self.window.episodes
        # The console line shows an evaluation once, in the log row after it (not stale copies).
        if self.eval_returns and self.eval_returns[-1][0] > self.env_step - c.log_every:
            record["eval_return"] = self.eval_returns[-1][1]
        if self.clock.open_loop(self.env_step) and self.updates:
            record.update(self.open_loop_check(writer) or {})
        self.detector.update(
            writer.write(self.env_step, {k: v for k, v in record.items() if k != "eval_return"})
        )
        metrics_lib.log_line(self.env_step, record, LOG_KEYS)

    def _keep_if_best(self, mean: float, std: float) -> None:
        """Keeps the agent of the best evaluation so far in ``<workdir>/best``."""

        def bundle():
            normalizer_mean, normalizer_std = self.normalizer.stats()
            return dict(
                config=self.config,
                spec=self.spec,
                wm_params=local_copy(self.state.wm_params),
                actor_params=local_copy(self.state.actor_params),
                obs_mean=normalizer_mean,
                obs_std=normalizer_std,
                step=self.env_step,
            )

        self.best_return = keep_if_best(
            self.workdir, self.best_return, mean, std, self.config.eval_episodes, bundle
        )

    def _evaluate(self) -> tuple[float, float]:
        """Mean and std of the evaluation return at the current env step; with several
        processes process 0 evaluates (its seeds, as in one process) and broadcasts the result
        (exactly: the float64 values travel as raw uint32 words)."""
        c = self.config
        mean_std = np.zeros(2, np.float64)
        # DEBUG: the log row that follows shows the result (one line per evaluation, not two).
        logging.debug("evaluating %d episodes at env step %d", c.eval_episodes, self.env_step)
        if self.lead:
            stop = getattr(self, "_stop", None)
            # One process may abandon an evaluation: the others wait for its broadcast.
            should_stop = None if self.multiprocess or stop is None else lambda: bool(stop.signum)
            due = video_due(c.eval_video_every, c.eval_every, self.env_step)
            self._recorder = self.video if due and self.video.available else None
            mean, std, _ = evaluate(
                c,
                self.act_fn,
                local_copy(self.state),
                self.normalizer,
                c.eval_episodes,
                seed=c.seed + 100_000 + self.env_step,
                should_stop=should_stop,
                recorder=self._recorder,
            )
            mean_std[:] = mean, std
        if self.multiprocess:
            words = multihost_utils.broadcast_one_to_all(mean_std.view(np.uint32))
            mean_std = np.asarray(words, np.uint32).view(np.float64)
        return float(mean_std[0]), float(mean_std[1])

    def close(self) -> None:
        """Closes the envs and checkpointer and releases the workdir's lock; idempotent."""
        try:
            if getattr(self, "ahead", None) is not None:
                self.ahead.close()
            if getattr(self, "envs", None) is not None:
                self.envs.close()
            if getattr(self, "checkpointer", None) is not None:
                self.checkpointer.close()
        finally:
            self.run_dir.close()
