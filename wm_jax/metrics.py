"""Metric logging: ``metrics.jsonl`` (one JSON object per line), TensorBoard event files, optional
Weights & Biases (the sinks of :mod:`wm_jax.metric_sinks`) and absl log lines, all from the same
aggregated dict."""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from wm_jax.metric_sinks import JsonlSink, make_sinks, tensorboard_tag  # noqa: F401


def aggregate(history: list[dict[str, Any]]) -> dict[str, float]:
    """Means over a window of per-update metric dicts (keys may differ between updates), with the
    continue predictor's termination-class precision and recall computed from summed counts."""
    window = LogWindow()
    for metrics in history:
        window.add(metrics)
    return window.means()


_EXACT_IN_F32 = frozenset(
    map(np.dtype, (jnp.float32, jnp.bfloat16, jnp.float16, jnp.bool_, jnp.int8, jnp.int16))
)


def _local_scalar(value: Any) -> bool:
    """A 0-d JAX array this process holds whole, in a dtype float32 represents exactly."""
    return (
        isinstance(value, jax.Array)
        and value.ndim == 0
        and value.is_fully_addressable
        and value.dtype in _EXACT_IN_F32
    )


@jax.jit
def _pack(values: tuple[jax.Array, ...]) -> jax.Array:
    return jnp.stack([v.astype(jnp.float32) for v in values])


class LogWindow:
    """The log row in progress: per-update metric dicts and episode returns since the last row.

    Updates' metrics stay on the device until the row (or a checkpoint) needs them, so training
    never waits on a host copy; they are then folded, in arrival order, into float64 sums and
    counts.  A checkpoint keeps the sums (:meth:`state_dict`), so a run stopped between two log
    steps and resumed writes the same next row as the run that never stopped: the additions
    happen in the same order either way.
    """

    def __init__(self) -> None:
        self.pending: list[dict[str, Any]] = []
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.return_sum, self.episodes = 0.0, 0

    def __bool__(self) -> bool:
        return bool(self.pending or self.counts)

    def add(self, metrics: dict[str, Any]) -> None:
        values = tuple(metrics.values())
        if values and all(_local_scalar(v) for v in values):
            # One [M] array per update instead of M scalars: the fold then copies one array per
            # update to the host (~10x less host time per log row); float32 holds every value
            # exactly as it was, so the float64 sums are the same.
            self.pending.append((tuple(metrics), _pack(values)))
        else:
            self.pending.append(metrics)

    def add_returns(self, total: float, episodes: int) -> None:
        self.return_sum += total
        self.episodes += episodes

    def _fold(self) -> None:
        packed = [p[1] if isinstance(p, tuple) else p for p in self.pending]
        for entry, host in zip(self.pending, jax.device_get(packed), strict=True):
            pairs = zip(entry[0], host, strict=True) if isinstance(entry, tuple) else host.items()
            for name, value in pairs:
                self.sums[name] += float(value)
                self.counts[name] += 1
        self.pending = []

    def means(self) -> dict[str, float]:
        """The update metrics' means, and termination precision/recall from the summed counts."""
        self._fold()
        sums = self.sums
        out = {name: sums[name] / self.counts[name] for name in sums}
        if "continue_true_terminations" in sums:
            predicted = sums["continue_predicted_terminations"]
            true = sums["continue_true_terminations"]
            correct = sums["continue_correct_terminations"]
            # Undefined (no terminations seen / predicted) is NaN, never a perfect 1.
            out["continue_termination_precision"] = correct / predicted if predicted else math.nan
            out["continue_termination_recall"] = correct / true if true else math.nan
        return out

    def state_dict(self) -> np.ndarray:
        """The window as UTF-8 JSON bytes (a uint8 array, never empty: orbax saves no zero-size
        arrays); ``repr``-exact floats, so a restored window sums on bit for bit."""
        self._fold()
        state = {
            "sums": dict(self.sums),
            "counts": dict(self.counts),
            "returns": [self.return_sum, self.episodes],
        }
        return np.frombuffer(json.dumps(state).encode(), np.uint8).copy()

    @classmethod
    def from_state_dict(cls, data: Any) -> LogWindow:
        """The window :meth:`state_dict` saved; an empty one for ``None`` (a checkpoint written
        before windows were saved)."""
        window = cls()
        if data is None:
            return window
        state = json.loads(np.asarray(data, np.uint8).tobytes().decode())
        window.sums.update(state["sums"])
        window.counts.update(state["counts"])
        window.return_sum, window.episodes = float(state["returns"][0]), int(state["returns"][1])
        return window


def jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metric values as ``metrics.jsonl`` stores them: floats, None for NaN/Inf, strings kept."""
    clean: dict[str, Any] = {}
    for name, value in metrics.items():
        if isinstance(value, str):
            clean[name] = value
            continue
        value = float(np.asarray(value))
        clean[name] = value if math.isfinite(value) else None
    return clean


WALL_TIME = "wall_time_s"


def last_wall_time(path: str) -> float:
    """The ``wall_time_s`` of the last row of ``path`` that has one (0.0: none, as in a new
    run or a metrics.jsonl written before the field existed)."""
    for row in reversed(read_jsonl(path, warn=False)):
        value = row.get(WALL_TIME)
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value)
    return 0.0


class MetricsWriter:
    """Writes metric dicts keyed by environment step to the workdir: ``metrics.jsonl``,
    TensorBoard and, with ``config.wandb.enabled``, Weights & Biases, all through the same
    calls (the sinks of :mod:`wm_jax.metric_sinks`; the loops never address a sink).

    Every row gets ``wall_time_s``: the seconds of training since the run started, counted
    from this writer's creation plus the ``wall_time_s`` of the last row already in
    metrics.jsonl.  The loops create the writer after ``RunDir.continue_logs`` dropped the
    rows the restored checkpoint does not hold, so a resumed run continues from the last row
    it kept: the time lost after that row (work redone after the resume, start-up) is not
    counted, and rows stay increasing with the steps they describe.  No checkpoint format
    changes, and an old metrics.jsonl without the field starts the count at 0."""

    def __init__(
        self,
        workdir: str,
        tensorboard: bool = True,
        purge_step: int | None = None,
        config=None,
        sinks: list | None = None,
    ):
        """``purge_step``: TensorBoard hides events at or after it written by an earlier
        process (a resumed run continues from its checkpoint: see ``RunDir.continue_logs``).
        ``config``: the run's config, whose ``wandb`` section adds the W&B sink.  ``sinks``
        replaces the sinks altogether (tests, your own sink with the same five calls)."""
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._clock_start = time.monotonic() - last_wall_time(self.path)
        self._sinks = (
            make_sinks(workdir, tensorboard, purge_step, config) if sinks is None else sinks
        )
        # Images and videos are rendered only when a sink shows them (not metrics.jsonl).
        self._media = any(not isinstance(s, JsonlSink) for s in self._sinks)

    def write(self, env_step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """Appends one record to every sink; returns it as written (see :func:`jsonable`)."""
        clean = jsonable(metrics)
        clean[WALL_TIME] = round(time.monotonic() - self._clock_start, 3)
        for sink in self._sinks:
            sink.write(int(env_step), clean)
        return {"env_step": int(env_step), **clean}

    def write_text(self, tag: str, text: str, step: int = 0) -> None:
        """A markdown text panel in TensorBoard (the run's config, ...)."""
        for sink in self._sinks:
            sink.write_text(tag, text, step)

    def write_image(
        self, tag: str, image: np.ndarray | Callable[[], np.ndarray], step: int
    ) -> None:
        """An image panel in TensorBoard and W&B (metrics.jsonl stays scalars).  ``tag`` is
        namespaced like the scalars' (``open_loop/strip``); ``image`` is ``[H, W, 3]`` uint8
        (1 or 4 channels also work), or a function returning one, called only when a sink
        shows images, so a figure is never rendered for nothing."""
        if "/" not in tag:
            raise ValueError(f"write_image: tag {tag!r} has no group (e.g. 'open_loop/strip')")
        if not self._media:
            return
        array = np.asarray(image() if callable(image) else image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
            raise ValueError(f"write_image: want [H, W, 3] uint8, got {array.dtype} {array.shape}")
        for sink in self._sinks:
            sink.write_image(tag, array, int(step))

    def write_video(self, tag: str, video, step: int) -> None:
        """An episode as an animated GIF (:class:`wm_jax.episode_video.Clip`) in TensorBoard's
        Images tab and W&B's media."""
        if "/" not in tag:
            raise ValueError(f"write_video: tag {tag!r} has no group (e.g. 'eval/episode')")
        for sink in self._sinks if self._media else ():
            sink.write_video(tag, video, int(step))

    def close(self) -> None:
        """Closes every sink; an error flushing them (a full disk) is only logged: the run
        already stopped on it, or stops on its next checkpoint."""
        for sink in self._sinks:
            try:
                sink.close()
            except OSError as err:
                logging.warning("closing the metrics of %s: %s", os.path.dirname(self.path), err)


def read_jsonl(path: str, warn: bool = True) -> list[dict[str, Any]]:
    """The JSON objects of ``path``, one per line; partial or damaged lines are skipped (with a
    warning naming them) instead of failing the reader."""
    if not os.path.exists(path):
        return []
    rows, bad = [], []
    with open(path, errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad.append(number)
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad.append(number)
    if bad and warn:
        logging.warning("%s: skipped %d damaged line(s) %s", path, len(bad), bad[:5])
    return rows


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All records of ``<workdir>/metrics.jsonl`` (for reports and tests); damaged lines are
    skipped with a warning."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    return read_jsonl(path)


def log_line(env_step: int, metrics: dict[str, Any], keys: tuple[str, ...]) -> None:
    parts = [f"step {env_step}"]
    for key in keys:
        if key in metrics and metrics[key] is not None and not isinstance(metrics[key], str):
            parts.append(f"{key}={metrics[key]:.4g}")
    logging.info(" | ".join(parts))
