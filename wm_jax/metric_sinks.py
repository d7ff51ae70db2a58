"""Where :class:`wm_jax.metrics.MetricsWriter` sends a run's metrics: ``metrics.jsonl``,
TensorBoard event files and (optional, ``config.wandb.enabled``) Weights & Biases.

Every sink has the same five calls, so the loops talk to one writer and never to a sink:

- ``write(step, record)``: one row of metrics (flat names, values as :func:`wm_jax.metrics.jsonable`
  made them: floats, None for NaN/Inf, strings);
- ``write_text(tag, text, step)``, ``write_image(tag, image, step)`` (``[H, W, 3]`` uint8),
  ``write_video(tag, video, step)`` (a :class:`wm_jax.episode_video.Clip`: frames and the
  animated GIF they make);
- ``close()``.

TensorBoard and W&B group names by the part before "/" (:func:`tensorboard_tag`); metrics.jsonl
keeps the flat names the seeds use.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import uuid
from typing import Any

import numpy as np
from absl import logging

from wm_jax.config import ConfigError
from wm_jax.errors import workdir_error

WANDB_HINT = "pip install -e .[wandb] (or pip install wandb)"
WANDB_ID_FILE = "wandb_run.json"

# The run's story first (eval, train), then one section per component.
_TB_GROUPS = (
    ("eval/", ("eval_",)),
    (
        "train/",
        ("train_", "episodes", "updates", "env_steps_per_s", "updates_per_s", "phase", "wall_"),
    ),
    ("env/", ("env_",)),
    ("open_loop/", ("open_loop_",)),
    ("critic/", ("critic_",)),
    ("actor/", ("actor_", "entropy", "mean_imagined_return", "imagined_", "return_", "policy_")),
)


def tensorboard_tag(name: str) -> str:
    """``eval_return`` -> ``eval/eval_return``, ``critic_loss`` -> ``critic/critic_loss``; what
    belongs to no other group is the world model's (its losses, predictors, representation)."""
    for group, prefixes in _TB_GROUPS:
        if any(name == p or name.startswith(p) for p in prefixes):
            return group + name
    return "world_model/" + name


class JsonlSink:
    """``<workdir>/metrics.jsonl``: one JSON object per row, ``{"env_step": step, ...}``; text,
    images and videos are not kept there."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = open(self.path, "a", buffering=1)

    def write(self, step: int, record: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps({"env_step": int(step), **record}) + "\n")
        except OSError as err:  # disk full, ...: a named error, not a traceback mid-loop
            raise workdir_error(os.path.dirname(self.path), err, "append to metrics.jsonl") from err

    def write_text(self, tag, text, step) -> None:
        pass

    def write_image(self, tag, image, step) -> None:
        pass

    def write_video(self, tag, video, step) -> None:
        pass

    def close(self) -> None:
        self._file.close()


def summary_writer_class():
    """tensorboardX's ``SummaryWriter``, imported without PyTorch.

    tensorboardX imports ``torch`` at module level whenever it is installed (for type hints
    only), which adds seconds to every run's start-up where torch is installed (the ``bench``
    extra, and most RL researchers' environments) and its memory to the process; the sink hands
    it floats and numpy arrays only.  While tensorboardX loads, ``sys.modules["torch"] = None``
    makes its ``import torch`` fail as if torch were absent; the entry is removed afterwards, so
    a later ``import torch`` (the user's, in a library run) works as usual.  Nothing is blocked
    when torch or tensorboardX is already loaded."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
    return SummaryWriter


class TensorBoardSink:
    """``<workdir>/tensorboard/`` (tensorboardX): scalars, text panels, images, and videos as
    animated GIFs in the Images tab (what tensorboardX's ``add_video`` writes, without
    needing moviepy)."""

    def __init__(self, workdir: str, purge_step: int | None = None):
        self.workdir = workdir
        self._tb = summary_writer_class()(
            os.path.join(workdir, "tensorboard"), purge_step=purge_step or None
        )

    def _check(self) -> bool:
        """Whether events can be written.  tensorboardX writes from a thread; when a write
        fails (a full disk) the thread dies and, once its queue fills, every later add_scalar
        would block forever: stop instead (and never hand it anything again)."""
        if self._tb is None:
            return False
        event_writer = getattr(self._tb._get_file_writer(), "event_writer", None)
        worker = getattr(event_writer, "_worker", None)
        if worker is not None and not worker.is_alive():
            self._tb = None
            raise workdir_error(
                self.workdir,
                OSError(errno.EIO, "the TensorBoard writer thread stopped (see the log above)"),
                "write TensorBoard events",
            )
        return True

    def write(self, step: int, record: dict[str, Any]) -> None:
        if not self._check():
            return
        for name, value in record.items():
            if isinstance(value, float):
                self._tb.add_scalar(tensorboard_tag(name), value, step)

    def write_text(self, tag: str, text: str, step: int) -> None:
        if self._tb is not None:
            self._tb.add_text(tag, text, step)

    def write_image(self, tag: str, image: np.ndarray, step: int) -> None:
        if self._check():
            self._tb.add_image(tag, image, int(step), dataformats="HWC")

    def write_video(self, tag: str, video, step: int) -> None:
        from tensorboardX.proto.summary_pb2 import Summary

        if not self._check():
            return
        _, height, width, channels = video.frames.shape
        image = Summary.Image(
            height=height, width=width, colorspace=channels, encoded_image_string=video.gif
        )
        summary = Summary(value=[Summary.Value(tag=tag, image=image)])
        self._tb._get_file_writer().add_summary(summary, int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def import_wandb():
    """The wandb module, or a :class:`ConfigError` naming the install command."""
    try:
        import wandb
    except ImportError as err:
        raise ConfigError(
            f"config.wandb.enabled: wandb is not installed: {WANDB_HINT}, or set "
            "config.wandb.enabled=False"
        ) from err
    return wandb


def wandb_run_id(workdir: str) -> str:
    """The W&B run id of ``workdir``: the one stored in ``<workdir>/wandb_run.json`` (a resumed
    run continues its W&B run), else ``new_id()``, stored there first."""
    path = os.path.join(workdir, WANDB_ID_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return str(json.load(f)["id"])
    run_id = uuid.uuid4().hex[:12]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"id": run_id}, f)
    os.replace(tmp, path)
    return run_id


def wandb_names(workdir: str) -> tuple[str, str | None]:
    """``(run name, group)``: the workdir's name; a seed of a ``--seeds`` run or of the device
    loop (``runs/x/seed_3``) is ``x/seed_3`` in group ``x``."""
    name = os.path.basename(os.path.normpath(workdir))
    parent = os.path.basename(os.path.dirname(os.path.normpath(workdir)))
    if name.startswith("seed_") and parent:
        return f"{parent}/{name}", parent
    return name, None


class WandbSink:
    """A Weights & Biases run (``config.wandb``): the resolved config as the run's config, the
    rows as its history (step = the row's ``env_step``, updates for an offline run), images and
    GIF videos as media.  Its files go to ``<workdir>/wandb/``; ``mode="offline"`` (the default)
    never contacts a server (``wandb sync <workdir>/wandb/offline-run-*`` uploads later).  A
    resumed run continues the same W&B run (its id is kept in ``<workdir>/wandb_run.json``);
    rows of steps the W&B run already holds (those redone after the checkpoint) are not sent
    again, as W&B steps only increase."""

    def __init__(self, workdir: str, config):
        wandb = import_wandb()
        self._wandb = wandb
        w = config.wandb
        name, group = wandb_names(workdir)
        resolved = json.loads(config.to_json_best_effort())
        run_id = wandb_run_id(workdir)
        try:
            self.run = wandb.init(
                project=w.project,
                entity=w.entity or None,
                name=name,
                group=group,
                id=run_id,
                resume="allow",
                dir=workdir,
                mode=w.mode,
                config=resolved,
                reinit="create_new",  # one W&B run per workdir, also several in one process
                settings=wandb.Settings(console="off"),  # the log stays the terminal's
            )
        except Exception as err:  # no API key, no network in online mode, ...
            raise ConfigError(
                f"config.wandb: could not start the W&B run ({type(err).__name__}: {err}); "
                "use config.wandb.mode=offline (upload later with `wandb sync`) or "
                "config.wandb.enabled=False"
            ) from err
        self.workdir = workdir
        self._first_step = int(getattr(self.run, "step", 0) or 0)  # > 0: a resumed W&B run

    def _log(self, data: dict[str, Any], step: int) -> None:
        if data and step >= self._first_step:
            self.run.log(data, step=int(step))

    def write(self, step: int, record: dict[str, Any]) -> None:
        values = {tensorboard_tag(k): v for k, v in record.items() if isinstance(v, float)}
        self._log(values, step)

    def write_text(self, tag, text, step) -> None:
        pass  # the one text panel is the config, which is the W&B run's config

    def write_image(self, tag: str, image: np.ndarray, step: int) -> None:
        self._log({tag: self._wandb.Image(image)}, step)

    def write_video(self, tag: str, video, step: int) -> None:
        path = os.path.join(self.workdir, f".wandb_video_{int(step)}.gif")
        with open(path, "wb") as f:
            f.write(video.gif)
        try:  # W&B copies the file into the run's media
            self._log({tag: self._wandb.Video(path, format="gif")}, step)
        finally:
            os.remove(path)

    def close(self) -> None:
        try:
            self.run.finish()
        except Exception as err:  # never turn a finished run into a failed one
            logging.warning("finishing the W&B run of %s: %s", self.workdir, err)


def make_sinks(workdir: str, tensorboard: bool, purge_step: int | None, config) -> list:
    """The sinks of a run: metrics.jsonl always, TensorBoard unless ``tensorboard=False``, W&B
    when ``config.wandb.enabled``."""
    sinks: list = [JsonlSink(workdir)]
    try:
        if tensorboard:
            sinks.append(TensorBoardSink(workdir, purge_step))
        wandb_config = config.get("wandb") if config is not None else None
        if wandb_config is not None and wandb_config.enabled:
            sinks.append(WandbSink(workdir, config))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks
