"""Your own environment, in one file: a point mass pushed to a goal (``PointMass-v0``).

Train on it (importing this module registers the id; ``module:EnvId`` makes gymnasium import it)::

    python -m wm_jax.train --config.env_id=experiments.envs.custom:PointMass-v0

To write your own, copy this file and keep to what wm_jax supports and relies on:

- a ``Box`` observation (float, or uint8 ``[H, W, C]`` images) with honest bounds: the env guard
  rejects values outside them (``--config.env_check``);
- a ``Discrete`` action, or a 1-D ``Box`` with finite bounds (the agent's ``[-1, 1]`` actions are
  rescaled to them);
- draw all randomness from ``self.np_random`` after ``super().reset(seed=seed)``: wm_jax seeds
  every episode and resumes a run by replaying its actions, so an episode must be a
  deterministic function of its reset seed and actions;
- return ``terminated=True`` only for a real end of the task (the model learns ``cont = 0``
  there) and let the registered ``max_episode_steps`` truncate (``cont`` stays 1).
"""

from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium import spaces


class PointMass(gymnasium.Env):
    """A point mass on the square ``[-1, 1]²``, pushed by a 2-D force towards a random goal.

    Observation: ``[x, y, vx, vy, goal_x, goal_y]``, all in ``[-1, 1]``.  Action: the force,
    ``[-1, 1]²``.  Reward: minus the distance to the goal, every step, so reaching it quickly
    pays.  Terminated when within ``GOAL_RADIUS`` of the goal; walls stop the mass.
    """

    metadata = {"render_modes": []}
    observation_space = spaces.Box(-1.0, 1.0, (6,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    DT = 0.1
    ACCELERATION = 2.0
    DAMPING = 1.0  # per unit time: the mass coasts to a stop without a force
    GOAL_RADIUS = 0.1

    def __init__(self) -> None:
        self._pos = np.zeros(2)
        self._vel = np.zeros(2)
        self._goal = np.zeros(2)

    def _obs(self) -> np.ndarray:
        return np.concatenate([self._pos, self._vel, self._goal]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-0.9, 0.9, 2)
        self._vel = np.zeros(2)
        self._goal = self.np_random.uniform(-0.9, 0.9, 2)
        return self._obs(), {}

    def step(self, action):
        force = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        vel = (1.0 - self.DAMPING * self.DT) * self._vel + self.DT * self.ACCELERATION * force
        vel = np.clip(vel, -1.0, 1.0)
        pos = self._pos + self.DT * vel
        vel[np.abs(pos) > 1.0] = 0.0  # hitting a wall stops that component
        self._pos, self._vel = np.clip(pos, -1.0, 1.0), vel
        distance = float(np.linalg.norm(self._pos - self._goal))
        return self._obs(), -distance, distance < self.GOAL_RADIUS, False, {}


if "PointMass-v0" not in gymnasium.registry:
    gymnasium.register("PointMass-v0", entry_point=PointMass, max_episode_steps=200)
