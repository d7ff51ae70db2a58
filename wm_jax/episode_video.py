"""One evaluation episode as a short animated GIF for TensorBoard and W&B (``eval/episode``).

The evaluation itself runs unrendered (:func:`wm_jax.training_eval.evaluate`); this module
keeps the environment actions of its first env and afterwards *replays* that episode in one
``render_mode="rgb_array"`` env, from the same episode seed: envs are deterministic given seed
and actions (the same property a resumed run relies on), so the replay is the evaluated episode,
with no policy call and no extra compilation.  Only every ``k``-th frame is drawn (``k`` chosen
so at most :data:`MAX_FRAMES` remain), each shrunk to at most :data:`MAX_SIDE` pixels a side.

An env that cannot render (gymnax ids, no ``rgb_array`` mode, pygame missing for
classic-control envs) is skipped with one warning for the run.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import time
import warnings

import numpy as np
from absl import logging

from wm_jax.envs import GYMNAX_PREFIX, episode_seed, make_env, to_env_action

MAX_FRAMES = 100  # frames kept per episode at most (every k-th env step)
MAX_SIDE = 160  # pixels of a frame's longer side at most


@dataclasses.dataclass
class Clip:
    """An episode's frames ``[T, H, W, 3]`` uint8 and the same as an animated GIF."""

    frames: np.ndarray
    gif: bytes
    fps: float
    episode_return: float  # of the replayed episode (equal to the evaluated one)
    every: int  # env steps between frames


def encode_gif(frames: np.ndarray, fps: float) -> bytes:
    """``[T, H, W, 3]`` uint8 frames as a looping animated GIF (Pillow)."""
    from PIL import Image

    images = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
    out = io.BytesIO()
    duration = max(20, int(round(1000 / max(fps, 1e-3))))
    images[0].save(
        out, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
    )
    return out.getvalue()


def _shrink(frame: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image

    frame = np.asarray(frame, np.uint8)
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=-1)
    frame = frame[..., :3]
    h, w = frame.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return frame
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))


def replay_episode(
    env_id: str,
    env_kwargs: dict,
    seed: int,
    env_actions: list,
    max_frames: int = MAX_FRAMES,
    max_side: int = MAX_SIDE,
) -> Clip:
    """Replays ``env_actions`` from a reset with ``seed`` in one rendering env of ``env_id`` and
    returns every ``k``-th frame (``k``: the episode's frames / ``max_frames``, rounded up).
    Raises ``ValueError`` (or the env's own error) when the env cannot render."""
    if env_id.startswith(GYMNAX_PREFIX):
        raise ValueError("gymnax envs have no rgb_array renderer")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")  # pygame's renderers need no sound card
    with warnings.catch_warnings():  # gymnasium warns of a render mode the env lacks: checked below
        warnings.simplefilter("ignore", UserWarning)
        env = make_env(env_id, dict(env_kwargs), render_mode="rgb_array")
    try:
        modes = env.metadata.get("render_modes") or []
        if "rgb_array" not in modes or env.render_mode != "rgb_array":
            raise ValueError(f"it has no rgb_array renderer (render_modes {list(modes)})")

        def play(every: int | None) -> tuple[list, int, float]:
            env.reset(seed=seed, options={})  # as VectorEnv's masked reset starts an episode
            frames = [env.render()] if every else []
            steps, total = 0, 0.0
            for action in env_actions:
                _, reward, terminated, truncated, _ = env.step(action)
                steps, total = steps + 1, total + float(reward)
                if every and steps % every == 0:
                    frames.append(env.render())
                if terminated or truncated:
                    break
            return frames, steps, total

        _, steps, _ = play(None)  # the length first (cheap: no rendering)
        every = max(1, math.ceil((steps + 1) / max_frames))
        frames, _, total = play(every)
        fps = float(env.metadata.get("render_fps") or 30) / every
    finally:
        env.close()
    if not frames or frames[0] is None:
        raise ValueError("render() returned no frame")
    array = np.stack([_shrink(f, max_side) for f in frames])
    fps = min(max(fps, 4.0), 30.0)
    return Clip(array, encode_gif(array, fps), fps, total, every)


class EpisodeRecorder:
    """Records the first env's actions of one evaluation and turns them into a :class:`Clip`
    (:meth:`clip`); a run keeps one, so an env that cannot render warns once and is then left
    alone."""

    def __init__(self, env_id: str, env_kwargs: dict):
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs)
        self.available = True
        self._actions: list = []
        self._spec = self._seed = None

    def begin(self, spec, base_seed: int) -> None:
        """An evaluation with envs of ``spec`` and base seed ``base_seed`` starts."""
        self._actions, self._spec = [], spec
        self._seed = episode_seed(base_seed, 0, 0)  # the first episode of env 0

    def act(self, agent_actions: np.ndarray) -> None:
        """The agent actions ``[N, A]`` of one vector step (env 0's are kept)."""
        self._actions.append(to_env_action(np.asarray(agent_actions)[:1], self._spec)[0])

    def clip(self) -> Clip | None:
        """The recorded episode, replayed and rendered; None if this env cannot render."""
        if not self.available or self._spec is None:
            return None
        start = time.monotonic()
        try:
            clip = replay_episode(self.env_id, self.env_kwargs, self._seed, self._actions)
        except Exception as err:  # no renderer, pygame missing, ...: the run goes on
            self.available = False
            logging.warning(
                "no evaluation video: %s cannot be rendered (%s: %s); for classic-control envs "
                'pip install "wm_jax[render]", or set config.eval_video_every=0',
                self.env_id,
                type(err).__name__,
                err,
            )
            return None
        finally:
            self._actions = []
        logging.info(
            "evaluation video: %d frames (every %d env steps) in %.2f s",
            len(clip.frames),
            clip.every,
            time.monotonic() - start,
        )
        return clip
