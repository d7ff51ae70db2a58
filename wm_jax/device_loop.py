"""The whole training loop as one compiled program, for JAX-native (gymnax) environments.

This is the "Anakin" layout of Hessel et al. (2021, *Podracer architectures*): environment
stepping, replay insertion and sampling, observation normalisation and the three update steps
all run inside one jitted ``lax.scan`` over loop iterations, so the host only wakes up to log,
evaluate and checkpoint.  Select it with ``--config.loop=device`` and a ``gymnax:`` id::

    python -m wm_jax.train --config=experiments/configs/cartpole.py \\
        --config.env_id=gymnax:CartPole-v1 --config.loop=device

``--config.num_seeds=8`` trains eight independent seeds (``seed, seed+1, …``) in the same
program with ``jax.vmap``; each gets its own ``seed_<s>/`` workdir with metrics, checkpoints and
report.  ``--config.lr_sweep=actor=1e-4,3e-4`` adds a learning-rate axis: one run per seed and
value (``seed_<s>-actor_lr_<v>/``), the value carried in ``TrainState.lr_scale``.  The update
steps, schedule, metrics and checkpoint format are the host loop's (:mod:`wm_jax.update`,
:mod:`wm_jax.schedule`, :mod:`wm_jax.checkpoint`), so
``wm_jax.load_policy`` and ``python -m wm_jax.evaluate`` read a device-loop workdir as well.

The program is built from one module per concept: :mod:`wm_jax.device_segment` (the loop state,
acting and env stepping, train steps and evaluation, compiled per segment),
:mod:`wm_jax.replay_device` (the replay ring), :class:`wm_jax.gymnax_env.GymnaxTask` (the envs)
and :mod:`wm_jax.normalizer` (the observation statistics).  This module is the driver: workdirs,
resume, the host-side clock of logs, evaluations and checkpoints, and the checkpoint format.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from wm_jax import metrics as metrics_lib
from wm_jax.checkpoint import Checkpointer
from wm_jax.config import (
    ConfigError,
    check_known_fields,
    check_wandb_installed,
    parse_lr_sweep,
    validate,
)
from wm_jax.device_segment import Cadence, DeviceLoop, LoopState, make_task
from wm_jax.diagnostics import Detector, Thresholds
from wm_jax.gymnax_env import EnvOutput, GymnaxTask
from wm_jax.inference import best_return, keep_if_best, spec_to_json
from wm_jax.normalizer import (
    DeviceNormalizer,
    normalizer_init,
    normalizer_stats,
    normalizer_update,
)
from wm_jax.replay_device import (
    DeviceReplay,
    replay_add,
    replay_init,
    replay_sample_flat,
    replay_sample_sequences,
)
from wm_jax.run_dir import RunDir, tree_bytes
from wm_jax.schedule import phase, update_counts
from wm_jax.sharding import make_mesh, shard_batch
from wm_jax.shell import (
    Clock,
    NonFiniteError,
    RunResult,
    StopOnSignal,
    all_finite,
    check_nonfinite,
    write_config_text,
)
from wm_jax.types import TrainState

# --------------------------------------------------------------------------------------------
# Checkpoints: the host loop's format (state + normaliser + loop counters) plus the device state
# --------------------------------------------------------------------------------------------


def _extras(ls: LoopState, eval_returns: list) -> dict[str, Any]:
    rest = ls.replace(train=None)
    leaves = jax.tree.leaves(jax.device_get(rest))
    return {
        # RunningMeanStd's layout, so load_policy reads a device-loop checkpoint unchanged.
        "normalizer": {
            "count": np.asarray(ls.norm.count, np.float64),
            "mean": np.asarray(ls.norm.mean, np.float64),
            "m2": np.asarray(ls.norm.m2, np.float64),
        },
        "device_loop": {f"{i:04d}": np.asarray(x) for i, x in enumerate(leaves)},
        "loop": {
            "env_step": np.asarray(ls.env_step, np.int64),
            "updates": np.asarray(ls.updates, np.int64),
            "eval_returns": np.asarray([(-1.0, 0.0, 0.0), *eval_returns], np.float64),
        },
    }


def _from_extras(template: LoopState, state: TrainState, extras) -> tuple[LoopState, list]:
    rest = template.replace(train=None)
    leaves, treedef = jax.tree.flatten(rest)
    saved = extras["device_loop"]
    if len(saved) != len(leaves):
        raise ValueError(
            f"the checkpoint's device-loop state has {len(saved)} arrays, this config expects "
            f"{len(leaves)}: it was written by a different config or environment"
        )
    restored = []
    for i, like in enumerate(leaves):
        x = np.asarray(saved[f"{i:04d}"])
        if x.shape != like.shape:
            raise ValueError(
                f"device-loop array {i} has shape {x.shape}, expected {like.shape}: the "
                "checkpoint belongs to a different config or environment"
            )
        restored.append(jnp.asarray(x, like.dtype))
    ls = jax.tree.unflatten(treedef, restored).replace(train=state)
    rows = np.asarray(extras["loop"]["eval_returns"])[1:].tolist()  # float64: step back to int
    evals = [(int(step), mean, std) for step, mean, std in rows]
    return ls, evals


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


_LOOPS: dict[str, DeviceLoop] = {}


def _device_loop(config) -> DeviceLoop:
    """One :class:`DeviceLoop` per config (seed aside), so a resumed or repeated run in the same
    process reuses its compiled segments instead of compiling them again."""
    key = config.copy_and_resolve_references()
    key.seed = 0
    key = key.to_json_best_effort(sort_keys=True)
    if key not in _LOOPS:
        _LOOPS.clear()  # keep at most one set of compiled programs alive
        _LOOPS[key] = DeviceLoop(config)
    return _LOOPS[key]


@dataclasses.dataclass
class SeedRun:
    """Host-side bookkeeping of one seed: its workdir, writer, checkpointer and detector."""

    seed: int
    workdir: str
    writer: metrics_lib.MetricsWriter | None  # opened once the logs follow the checkpoint
    checkpointer: Checkpointer | None
    detector: Detector
    run_dir: RunDir
    eval_returns: list = dataclasses.field(default_factory=list)
    best_return: float = -np.inf  # of the agent kept in <workdir>/best


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _index(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _canonical(ls: LoopState) -> LoopState:
    """Every leaf a strongly typed array committed to the first local device: a fresh state
    (with weakly typed env fields), one restored from a checkpoint (some leaves uncommitted) and
    a segment's output then give the segments one signature, so a resumed or repeated run in the
    same process reuses the compiled segments instead of compiling each of them again."""
    device = jax.local_devices()[0]
    return jax.tree.map(lambda x: jax.device_put(jnp.asarray(x, dtype=x.dtype), device), ls)


def train_device(config, workdir: str, stop_at: int | None = None) -> list:
    """Runs the on-device loop for ``config`` (``config.num_seeds`` seeds at once) and returns
    the per-seed :class:`wm_jax.trainer.RunResult` list.  Resumes from checkpoints."""
    if jax.process_count() > 1:  # a multi-process run trains through the host loop only
        raise ConfigError(
            "config.loop: the device loop runs in one process; a multi-process (multi-host) "
            "run needs loop=host"
        )
    loop = _device_loop(config)
    check_known_fields(config)
    check_wandb_installed(config)
    c = validate(config)  # the loop may be cached from a run with another seed
    workdir = os.path.abspath(workdir)
    # One vmapped run per (seed, swept learning rate): seeds seed .. seed+num_seeds-1.
    sweep = parse_lr_sweep(c)
    group, lrs = sweep if sweep else (None, (None,))
    grid = [(c.seed + i, lr) for i in range(c.num_seeds) for lr in lrs]
    num_seeds = len(grid)  # the length of the vmapped axis
    spec_json = spec_to_json(loop.spec)
    seed_configs = []
    for seed, lr in grid:
        name = f"seed_{seed}" + (f"-{group}_lr_{lr:g}" if lr is not None else "")
        wd = workdir if num_seeds == 1 else os.path.join(workdir, name)
        seed_config = c.copy_and_resolve_references()
        seed_config.seed = seed
        if lr is not None:
            seed_config[group].lr = lr
            seed_config.lr_sweep = ""
        seed_configs.append((seed, wd, seed_config))
    # One run per workdir (the lock covers the seeds' subdirectories), every seed's resume
    # checked before anything is written.
    one = num_seeds == 1
    root = RunDir.open(workdir, c if one else None, spec_json if one else None)
    try:
        for _, wd, seed_config in seed_configs if num_seeds > 1 else []:
            RunDir(wd).check_resume(seed_config, spec_json)
        return _train_device(c, loop, root, seed_configs, spec_json, sweep, grid, stop_at)
    finally:
        root.close()


def _train_device(c, loop, root, seed_configs, spec_json, sweep, grid, stop_at) -> list:
    group = sweep[0] if sweep else None
    num_seeds = len(grid)
    states = [loop.init(seed) for seed, _ in grid]
    if c.checkpoint_every:  # every seed's checkpoint must fit on the workdir's disk
        root.check_free_space(sum(tree_bytes(s) for s in states))
    runs = []
    for seed, wd, seed_config in seed_configs:
        run_dir = root if wd == root.path else RunDir(wd)
        run_dir.write_run_files(seed_config, spec_json)
        runs.append(
            SeedRun(
                seed=seed,
                workdir=wd,
                writer=None,
                checkpointer=Checkpointer(os.path.join(wd, "checkpoints"), c.keep_checkpoints)
                if c.checkpoint_every
                else None,
                detector=Detector(Thresholds.from_config(c)),
                run_dir=run_dir,
            )
        )

    if sweep:
        index = ("world_model", "actor", "critic").index(group)
        for i, (_, lr) in enumerate(grid):
            scale = states[i].train.lr_scale.at[index].set(lr / c[group].lr)
            states[i] = states[i].replace(train=states[i].train.replace(lr_scale=scale))
    resumed = []
    try:
        for i, run in enumerate(runs):
            if run.checkpointer is None:
                resumed.append(None)
                continue

            def load(step, state, extras, i=i, run=run):
                states[i], run.eval_returns = _from_extras(states[i], state, extras)
                logging.info("resumed from checkpoint at env step %d in %s", step, run.workdir)

            resumed.append(run.checkpointer.restore_newest_valid(states[i].train, load))
        if c.eval_video_every:
            logging.info("no evaluation video: the device loop's gymnax envs do not render")
        for run, step, (_, _, seed_config) in zip(runs, resumed, seed_configs, strict=True):
            run.best_return = best_return(run.workdir)
            purge = run.run_dir.continue_logs(step)  # rows after the checkpoint: dropped
            run.writer = metrics_lib.MetricsWriter(
                run.workdir, purge_step=purge, config=seed_config
            )
            if step is None:
                write_config_text(run.writer, c)
    except BaseException:
        for run in runs:
            if run.checkpointer is not None:
                run.checkpointer.close()
            if run.writer is not None:
                run.writer.close()
        raise
    try:
        return _loop(c, loop, runs, states, resumed, num_seeds, stop_at)
    finally:
        for run in runs:
            run.writer.close()
            if run.checkpointer is not None:
                run.checkpointer.close()


def _loop(c, loop, runs, states, resumed, num_seeds, stop_at) -> list:
    steps_now = {int(s.env_step) for s in states}
    if len(steps_now) != 1:
        raise RuntimeError(
            f"the seeds' checkpoints are at different env steps {sorted(steps_now)}; remove the "
            "newer ones (or the workdir) so all seeds resume from the same step"
        )
    ls = _canonical(states[0] if num_seeds == 1 else _stack(states))
    if c.data_parallel:
        # Seeds are independent: one slice of the seed axis per device, no communication.
        if num_seeds == 1:
            raise ConfigError(
                "config.data_parallel: the device loop spreads seeds over devices; set "
                "config.num_seeds to a multiple of the device count"
            )
        ls = shard_batch(ls, make_mesh(), field="config.num_seeds")
    env_step = steps_now.pop()
    end = c.total_env_steps if stop_at is None else min(stop_at, c.total_env_steps)
    s = c.schedule
    boundaries = (loop.train_start, s.warmup_steps, s.transition_steps)
    if s.multi_update:
        boundaries += (s.early_late_boundary,)
    per_iteration = loop.cadence.env_repeat * c.num_envs
    last_time, last_step = time.time(), env_step
    clock = Clock.online(c)
    signals = StopOnSignal()  # SIGTERM/SIGINT: finish the segment, save, return
    try:
        signals.__enter__()
        while env_step < end and signals.signum is None:
            stop = clock.next_stop(env_step, end, boundaries)
            iterations = max(1, -(-(stop - env_step) // per_iteration))
            prefill = env_step < loop.train_start
            counts = None if prefill else update_counts(env_step, s)
            fn = loop.segment(iterations, counts, prefill, num_seeds)
            previous = env_step
            ls, summary = fn(ls)
            summary = jax.device_get(summary)
            env_step = previous + iterations * per_iteration
            log = clock.log(previous, env_step)
            evals = None
            if clock.evaluate(previous, env_step):
                # Each run's own seed, as the host loop and the same run alone use.
                seeds = [run.seed + 100_000 + env_step for run in runs]
                evals = loop.evaluate(ls, seeds, num_seeds)
                evals = evals.reshape(num_seeds, -1)
            now = time.time()
            for i, run in enumerate(runs):
                seed_summary = summary if num_seeds == 1 else _index(summary, i)
                one = ls if num_seeds == 1 else _index(ls, i)
                if evals is not None:
                    mean, std = float(evals[i].mean()), float(evals[i].std())
                    run.eval_returns.append((env_step, mean, std))
                    row = {"eval_return": mean, "eval_return_std": std}
                    row["eval_return_stderr"] = std / np.sqrt(max(evals.shape[1], 1))
                    run.detector.update(run.writer.write(env_step, row))
                    _keep_if_best(run, one, loop, c, env_step, mean, std, evals.shape[1])
                if log:
                    record = _record(seed_summary, one, env_step, c, now - last_time, last_step)
                    if clock.open_loop(env_step) and env_step > loop.train_start:
                        check = loop.open_loop_check(one, run.seed, run.workdir, run.writer)
                        record.update(check or {})
                    run.detector.update(run.writer.write(env_step, record))
                    if i == 0:
                        if run.eval_returns and run.eval_returns[-1][0] > last_step:
                            record["eval_return"] = run.eval_returns[-1][1]  # new ones only
                        metrics_lib.log_line(env_step, record, _LOG_KEYS)
            if log:
                last_time, last_step = now, env_step
            if not prefill:  # the host loop's rule: max_nonfinite_updates skips in a row stop
                for i, run in enumerate(runs):
                    one = ls if num_seeds == 1 else _index(ls, i)
                    check_nonfinite(one.train, c, env_step, run.checkpointer)
            if clock.checkpoint(previous, env_step):
                _save(runs, ls, num_seeds)
                clock.saved()
        if c.checkpoint_every:
            if any(r.checkpointer.latest_step() != env_step for r in runs):
                _save(runs, ls, num_seeds)
    finally:
        signals.__exit__()
    if c.report and env_step >= c.total_env_steps and signals.signum is None:
        from wm_jax.report import write_report

        for run in runs:
            logging.info("report: %s", write_report(run.workdir))
    return [
        RunResult(run.workdir, env_step, list(run.eval_returns), resumed[i], signals.signum)
        for i, run in enumerate(runs)
    ]


_LOG_KEYS = ("eval_return", "train_return", "world_model_loss", "mean_imagined_return")


def _record(summary, one: LoopState, env_step, c, elapsed, last_step) -> dict[str, Any]:
    """One log row, with the host loop's names: ``updates`` and ``episodes`` count from the
    start of the run, ``train_return`` averages the episodes finished since the last row."""
    summary = dict(summary)
    episodes = float(summary.pop("_episodes"))
    total = float(summary.pop("_return_sum"))
    record = metrics_lib.aggregate([summary]) if summary else {}
    record["env_steps_per_s"] = (env_step - last_step) / max(elapsed, 1e-9)
    record["updates"] = int(one.updates)
    record["episodes"] = int(np.sum(jax.device_get(one.episode)))
    record["phase"] = phase(env_step, c.schedule)
    if episodes:
        record["train_return"] = total / episodes
    return record


def _keep_if_best(run, one: LoopState, loop, c, env_step, mean, std, episodes) -> None:
    """The host loop's best agent, per seed: a policy bundle in ``<seed workdir>/best``."""

    def bundle():
        obs_mean, obs_std = jax.device_get(normalizer_stats(one.norm, loop.norm_enabled))
        seed_config = c.copy_and_resolve_references()
        seed_config.seed = run.seed
        return dict(
            config=seed_config,
            spec=loop.spec,
            wm_params=jax.device_get(one.train.wm_params),
            actor_params=jax.device_get(one.train.actor_params),
            obs_mean=obs_mean,
            obs_std=obs_std,
            step=env_step,
        )

    run.best_return = keep_if_best(run.workdir, run.best_return, mean, std, episodes, bundle)


def _save(runs, ls: LoopState, num_seeds: int) -> None:
    for i, run in enumerate(runs):
        one = ls if num_seeds == 1 else _index(ls, i)
        if not bool(all_finite(one.train)):
            raise NonFiniteError(
                f"seed {run.seed}: the train state at env step {int(one.env_step)} holds "
                f"non-finite values; not saving it.  The last good checkpoint is env step "
                f"{run.checkpointer.latest_step()} in {run.checkpointer.directory}."
            )
        run.checkpointer.save(int(one.env_step), one.train, _extras(one, run.eval_returns))
    for run in runs:
        run.checkpointer.wait()


# Besides train_device, the names tests and benchmarks import from wm_jax.device_loop, re-exported
# from the modules of their concepts (device_segment, replay_device, normalizer, gymnax_env).
__all__ = [
    "Cadence",
    "DeviceLoop",
    "DeviceNormalizer",
    "DeviceReplay",
    "EnvOutput",
    "GymnaxTask",
    "LoopState",
    "make_task",
    "normalizer_init",
    "normalizer_stats",
    "normalizer_update",
    "replay_add",
    "replay_init",
    "replay_sample_flat",
    "replay_sample_sequences",
    "train_device",
]
