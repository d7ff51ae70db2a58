"""Pieces the benchmarks share."""

from __future__ import annotations

import numpy as np

from wm_jax.types import Sequence, Transition


def random_batch(config, spec, rng: np.random.Generator):
    """A batch of the config's layout (flat or ``[B, T]`` sequences) with random observations,
    random discrete actions, unit rewards and ~5 % terminations: timing needs shapes, not data."""
    b, t = config.batch_size, config.sequence_length
    act = np.eye(spec.action_dim, dtype=np.float32)[rng.integers(0, spec.action_dim, (b, t))]
    if config.sequence_mode:
        return Sequence(
            obs=rng.normal(size=(b, t + 1, *spec.obs_shape)).astype(np.float32),
            action=act,
            reward=np.ones((b, t), np.float32),
            cont=(rng.random((b, t)) > 0.05).astype(np.float32),
            mask=np.ones((b, t), np.float32),
        )
    return Transition(
        obs=rng.normal(size=(b, *spec.obs_shape)).astype(np.float32),
        action=act[:, 0],
        reward=np.ones(b, np.float32),
        next_obs=rng.normal(size=(b, *spec.obs_shape)).astype(np.float32),
        cont=(rng.random(b) > 0.05).astype(np.float32),
        mask=np.ones(b, np.float32),
    )
