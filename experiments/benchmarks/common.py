"""Pieces the benchmarks share."""

from __future__ import annotations

import numpy as np

from wm_jax.types import Sequence, Transition


def random_batch(config, spec, rng: np.random.Generator):
    """A batch of the config's layout (flat or ``[B, T]`` sequences) with random observations,
    random discrete actions, unit rewards and ~5 % terminations: timing needs shapes, not data.
    Observations take the spec's dtype: uint8 boards of {0, 255} (~10 % lit) for images, so a
    pixel config is timed on its real uint8 input path."""
    b, t = config.batch_size, config.sequence_length
    act = np.eye(spec.action_dim, dtype=np.float32)[rng.integers(0, spec.action_dim, (b, t))]

    def obs(*lead):
        if np.issubdtype(np.dtype(spec.obs_dtype), np.integer):
            return ((rng.random((*lead, *spec.obs_shape)) > 0.9) * 255).astype(spec.obs_dtype)
        return rng.normal(size=(*lead, *spec.obs_shape)).astype(np.float32)

    if config.sequence_mode:
        return Sequence(
            obs=obs(b, t + 1),
            action=act,
            reward=np.ones((b, t), np.float32),
            cont=(rng.random((b, t)) > 0.05).astype(np.float32),
            mask=np.ones((b, t), np.float32),
        )
    return Transition(
        obs=obs(b),
        action=act[:, 0],
        reward=np.ones(b, np.float32),
        next_obs=obs(b),
        cont=(rng.random(b) > 0.05).astype(np.float32),
        mask=np.ones(b, np.float32),
    )
