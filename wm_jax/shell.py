"""What the three training loops share (host :mod:`wm_jax.trainer`, on-device
:mod:`wm_jax.device_loop`, offline :mod:`wm_jax.offline`): the run's result, the signal
handling, the host batch pipeline, the non-finite guard, the open-loop check's record and the
console progress bar.  The workdir itself (lock, resume check, logs that follow checkpoints) is
:mod:`wm_jax.run_dir`."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from wm_jax import _allocator
from wm_jax import metrics as metrics_lib
from wm_jax.checkpoint import Checkpointer
from wm_jax.networks.common import describe_precision
from wm_jax.normalizer import normalize
from wm_jax.replay import ReplayBuffer
from wm_jax.types import Sequence
from wm_jax.update import nonfinite_streak


class NonFiniteError(RuntimeError):
    """Too many consecutive updates had non-finite losses or gradients; the run stopped."""


@dataclasses.dataclass
class RunResult:
    """What :func:`train` returns: where the run is, how far it got, its evaluations."""

    workdir: str
    env_steps: int
    eval_returns: list[tuple[int, float, float]]  # (env_step, mean, std)
    resumed_from: int | None
    interrupted_by: int | None = None  # the signal (SIGTERM/SIGINT) that stopped the run early


class StopOnSignal:
    """While active, SIGTERM and SIGINT ask the loop to stop after the current env step (so a
    final checkpoint can be written) instead of killing it; a second signal acts as usual.
    A signal the process inherited as ignored stays ignored (``nohup``, a non-interactive
    shell's background job ignores SIGINT): as CPython itself leaves it at start-up.

    "As usual" is the handler that was there before (the CLI's SIGTERM: ``SystemExit(143)``;
    SIGINT: ``KeyboardInterrupt``), and those are exceptions: Python runs a signal handler in
    whatever frame is current, a finalizer's or a library callback's included, where an
    exception is only printed and the loop would go on to its graceful stop.  So after a
    second signal, reading :attr:`signum` acts as usual again: the loop, which reads it every
    step, ends at once wherever the first exception went."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self._signum: int | None = None
        self._forced: int | None = None  # the second signal, once there was one
        self._previous: dict[int, Any] = {}

    @property
    def signum(self) -> int | None:
        """The first signal received (``None`` while there was none)."""
        if self._forced is not None:
            self._act_as_usual(self._forced)
        return self._signum

    def _handle(self, signum, frame) -> None:
        if self._signum is not None:  # a second signal is not deferred
            self._forced = signum
            self._restore()
            self._act_as_usual(signum)
            return
        self._signum = signum
        logging.warning("received %s: stopping after this step", signal.Signals(signum).name)

    def _act_as_usual(self, signum: int) -> None:
        handler = self._previous.get(signum, signal.SIG_DFL)
        if callable(handler):
            handler(signum, None)
        elif handler != signal.SIG_IGN:  # SIG_DFL (or None: not set from Python): ended by it
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signal() works only there
            self._previous = {
                sig: signal.signal(sig, self._handle)
                for sig in self.SIGNALS
                if signal.getsignal(sig) is not signal.SIG_IGN
            }
        return self

    def __exit__(self, *exc) -> None:
        self._restore()


def prepare_batch(batch, obs_mean, obs_std, reward_scale):
    """Host numpy batch -> device batch with normalised observations and scaled rewards."""
    batch = jax.tree.map(jax.numpy.asarray, batch)
    scaled = dict(reward=batch.reward * reward_scale)
    if batch.return_to_go is not None:
        scaled["return_to_go"] = batch.return_to_go * reward_scale
    if isinstance(batch, Sequence):
        return batch.replace(obs=normalize(batch.obs, obs_mean, obs_std), **scaled)
    return batch.replace(
        obs=normalize(batch.obs, obs_mean, obs_std),
        next_obs=normalize(batch.next_obs, obs_mean, obs_std),
        **scaled,
    )


prepare_batch_jit = jax.jit(prepare_batch)


@jax.jit
def all_finite(tree) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree) if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact)]
    return jax.numpy.all(jax.numpy.stack([jax.numpy.isfinite(x).all() for x in leaves]))


def episode_return_gamma(config) -> float | None:
    """The discount a replay keeps terminated episodes' returns with, for the critic's real-data
    targets (``config.critic.real_targets = "episode"``); None when they are not wanted."""
    if config.critic.get("real_targets", "lambda") == "episode":
        return float(config.imagination.gamma)
    return None


def keep_episode_returns(replay: ReplayBuffer, config) -> None:
    """Has the host ``replay`` keep them (see :func:`episode_return_gamma`)."""
    gamma = episode_return_gamma(config)
    if gamma is not None:
        replay.keep_returns(gamma)


def sample_batch(
    replay: ReplayBuffer, config, updates: int, rows: int | None = None, stream: tuple = ()
):
    """The host batch of update number ``updates``: its generator is derived from
    ``(seed, updates)``, so a resumed run draws exactly what the uninterrupted one would have.
    ``rows`` (default ``config.batch_size``) and ``stream`` (appended to the seed) give each
    process of a multi-process run its own share of the batch."""
    rng = np.random.default_rng([config.seed, updates, 11, *stream])
    rows = config.batch_size if rows is None else rows
    share = config.get("replay_terminal_fraction", 0.0)
    if config.sequence_mode:
        return replay.sample_sequences(rng, rows, config.sequence_length, share)
    return replay.sample_flat(rng, rows, share)


def open_loop_check(
    open_loop_fn,
    wm_params,
    replay: ReplayBuffer,
    normalizer,
    config,
    step: int,
    workdir: str,
    writer=None,
) -> dict[str, Any] | None:
    """The open-loop prediction check on replayed windows (:mod:`wm_jax.open_loop`); writes
    one line of ``open_loop.jsonl`` (and its TensorBoard image to ``writer``, see
    :func:`record_open_loop`) and returns scalar summaries for the metrics, or None while the
    replay holds no window of the configured horizon."""
    d = config.diagnostics
    rng = np.random.default_rng([config.seed, step, 13])
    try:
        windows = replay.sample_sequences(rng, d.open_loop_batch, d.open_loop_horizon)
    except ValueError:
        return None
    mean, std = normalizer.stats()
    batch = prepare_batch_jit(windows, mean, std, np.float32(config.reward_scale))
    out = jax.device_get(open_loop_fn(wm_params, batch))
    return record_open_loop(out, windows, mean, std, step, workdir, writer)


def record_open_loop(
    out, windows, mean, std, step: int, workdir: str, writer=None
) -> dict[str, Any]:
    """Writes one open-loop check (``out`` of :func:`wm_jax.open_loop.open_loop_check` on the
    host ``windows``) to ``open_loop.jsonl``, and for image observations a PNG strip of true vs
    predicted frames (:mod:`wm_jax.open_loop_video`); returns the metrics' summaries.  Shared
    by the host, device and offline loops.

    ``writer`` (the loop's metric writer; None: :class:`NoWriter`) gets the check as a
    TensorBoard image at ``step``: the strip (``open_loop/strip``), or for vector observations
    the report's predicted-vs-true trajectories (``open_loop/trajectories``), drawn only when
    the writer writes TensorBoard events."""
    writer = NoWriter() if writer is None else writer
    obs_err = out["obs_error_by_step"]
    record: dict[str, Any] = {
        "env_step": step,
        "error_by_step": obs_err.tolist(),
        "state_error_by_step": out["state_error_by_step"].tolist(),
        "valid_by_step": out["valid_by_step"].tolist(),
    }
    obs_rank = windows.obs.ndim - 2  # windows.obs is [B, T + 1, *obs_shape]
    if obs_rank == 1:  # a few trajectories in raw observation units
        n = min(3, windows.obs.shape[0])
        std_np, mean_np = np.asarray(std), np.asarray(mean)
        record["true"] = windows.obs[:n, 1:].tolist()
        record["pred"] = (out["pred_obs"][:n] * std_np + mean_np).tolist()
        record["mask"] = windows.mask[:n].tolist()

        def trajectories(check=record):
            from wm_jax.report_plots import trajectory_image  # matplotlib only when drawn

            return trajectory_image(check)

        writer.write_image("open_loop/trajectories", trajectories, step)
    elif obs_rank == 3:  # images: true vs decoded frames over the horizon, as a PNG strip
        from wm_jax.open_loop_video import render_strip, save_strip

        strip = render_strip(
            windows.obs[:, 1:], out["pred_obs"], windows.mask, windows.obs.dtype, mean, std
        )
        record["strip"] = save_strip(workdir, step, strip)
        writer.write_image("open_loop/strip", strip, step)
    with open(os.path.join(workdir, "open_loop.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    valid = out["valid_by_step"] > 0
    last = int(np.nonzero(valid)[0][-1]) if valid.any() else 0
    return {
        "open_loop_error_step1": float(obs_err[0]),
        "open_loop_error_last": float(obs_err[last]),
        "open_loop_error_mean": float(np.mean(obs_err[valid])) if valid.any() else 0.0,
    }


def check_nonfinite(
    state, config, step: int, checkpointer: Checkpointer | None, unit: str = "env step"
) -> None:
    """Stops a run after ``max_nonfinite_updates`` consecutive skipped updates of any
    optimiser (each skip left that optimiser's parameters and state unchanged)."""
    streaks = jax.device_get(
        {
            "world_model": nonfinite_streak(state.wm_opt_state),
            "actor": nonfinite_streak(state.actor_opt_state),
            "critic": nonfinite_streak(state.critic_opt_state),
        }
    )
    group, streak = max(streaks.items(), key=lambda kv: int(kv[1]))
    limit = config.max_nonfinite_updates
    if int(streak) < limit:
        return
    last = checkpointer.latest_step() if checkpointer is not None else None
    where = (
        f"the last good checkpoint is {unit} {last} in {checkpointer.directory}"
        if last is not None
        else "no checkpoint was written"
    )
    raise NonFiniteError(
        f"{int(streak)} consecutive {group} updates had a non-finite loss or gradient at {unit} "
        f"{step} (limit config.max_nonfinite_updates={limit}); every one was "
        f"skipped, so no NaN reached the parameters, and {where}.  Likely causes: a "
        f"learning rate too high for config.{group}.lr={config[group].lr}, or NaN/Inf "
        "in the observations or rewards the environment returns."
    )


def write_config_text(writer, config) -> None:
    """The run's resolved config as a TensorBoard text panel (written once, on a fresh start)."""
    precision = describe_precision(config.get("precision", "float32"))
    logging.info("update matmul precision: %s; allocator: %s", precision, _allocator.describe())
    writer.write_text("config", "```json\n" + config.to_json_best_effort(indent=1) + "\n```")


class SaveClock:
    """The time side of the checkpoint rule: a save is due once ``checkpoint_seconds`` of
    training passed since the last one (0: never by time)."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.last = time.monotonic()

    def due(self) -> bool:
        return bool(self.seconds) and time.monotonic() - self.last >= self.seconds

    def saved(self) -> None:
        self.last = time.monotonic()


def crossed(every: int, before: int, after: int) -> bool:
    """Whether a counter moving from ``before`` to ``after`` passed a multiple of ``every``
    (``every`` = 0: never)."""
    return bool(every) and after // every > before // every


class Clock:
    """The one clock of the host, device and offline loops: a log row, an evaluation, an
    open-loop check or a checkpoint is due when the loop's counter (env steps online, updates
    offline) passes a multiple of its interval; a checkpoint also once ``checkpoint_seconds``
    of training passed since the last save.  Stateless but for that time, so a resumed run keeps
    the uninterrupted run's schedule."""

    def __init__(
        self,
        log_every: int,
        eval_every: int = 0,
        checkpoint_every: int = 0,
        open_loop_every: int = 0,
        checkpoint_seconds: float = 0.0,
    ):
        self.log_every, self.eval_every = int(log_every), int(eval_every)
        self.checkpoint_every, self.open_loop_every = int(checkpoint_every), int(open_loop_every)
        self._clock = SaveClock(checkpoint_seconds)

    @classmethod
    def online(cls, config) -> Clock:
        """Intervals in env steps (the host and device loops)."""
        return cls(
            config.log_every,
            config.eval_every,
            config.checkpoint_every,
            config.diagnostics.open_loop_every,
            config.get("checkpoint_seconds", 0.0),
        )

    @classmethod
    def offline(cls, config) -> Clock:
        """Intervals in updates (``config.offline``)."""
        o = config.offline
        return cls(
            o.log_every,
            o.get("eval_every", 0),
            o.checkpoint_every,
            o.open_loop_every,
            config.get("checkpoint_seconds", 0.0),
        )

    def log(self, before: int, after: int) -> bool:
        return crossed(self.log_every, before, after)

    def evaluate(self, before: int, after: int) -> bool:
        return crossed(self.eval_every, before, after)

    def open_loop(self, after: int) -> bool:
        """At a log row: whether its window (the ``log_every`` before ``after``) passed a
        multiple of ``open_loop_every``."""
        return crossed(self.open_loop_every, after - max(self.log_every, 1), after)

    def checkpoint(self, before: int, after: int, by_time: bool = True) -> bool:
        """By the counter, or (``by_time``) by the clock.  A multi-process run passes
        ``by_time=False``: every process must take the same decision."""
        if not self.checkpoint_every:
            return False
        return crossed(self.checkpoint_every, before, after) or (by_time and self._clock.due())

    def saved(self) -> None:
        """A checkpoint was written: the time side restarts."""
        self._clock.saved()

    def next_stop(self, counter: int, end: int, boundaries: tuple[int, ...] = ()) -> int:
        """The next counter value at which something is due (or a boundary, or ``end``): where
        a loop that runs many steps per call must stop."""
        stops = [end] + [b for b in boundaries if b > counter]
        every = (self.log_every, self.eval_every, self.checkpoint_every)
        stops += [(counter // e + 1) * e for e in every if e]
        return min(stops)


class NoWriter:
    """The metrics writer of processes other than 0: writes nothing."""

    def write(self, env_step, metrics):
        return {"env_step": int(env_step), **metrics_lib.jsonable(metrics)}

    def write_text(self, tag, text, step=0):
        pass

    def write_image(self, tag, image, step):
        pass  # a function passed as ``image`` is never called: nothing is rendered

    def write_video(self, tag, video, step):
        pass

    def close(self):
        pass


class NoBar:
    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


class _AboveTheBar:
    """A stream for the log handler while a bar is drawn: each line goes out through
    ``tqdm.write``, which clears the bar, prints the line and redraws the bar below it, so log
    lines never land on the bar's line (and the bar never lands in the middle of one)."""

    def __init__(self, stream):
        self.stream = stream
        self._partial = ""

    def write(self, text: str) -> None:
        from tqdm import tqdm

        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            tqdm.write(line, file=self.stream)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


class Bar:
    """A tqdm bar with env steps/s on stderr; absl's log lines are printed above it."""

    def __init__(self, total: int, initial: int):
        from tqdm import tqdm

        self._tqdm = tqdm(total=total, initial=initial, unit="env step", dynamic_ncols=True)
        self._handler = logging.get_absl_handler().python_handler
        self._stream = self._handler.stream
        self._handler.stream = _AboveTheBar(self._stream)

    def update(self, n):
        self._tqdm.update(n)

    def set_postfix(self, **kw):
        self._tqdm.set_postfix(**kw)

    def close(self):
        self._handler.stream = self._stream
        self._tqdm.close()


def progress_bar(total: int, initial: int):
    """A tqdm bar with env steps/s when attached to a terminal; silent otherwise."""
    if not sys.stderr.isatty():
        return NoBar()
    return Bar(total, initial)
