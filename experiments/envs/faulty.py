"""A CartPole that now and then returns a NaN observation or reward: for fault injection.

Importing this module registers ``FaultyCartPole-v1``; from the command line use the id
``experiments.envs.faulty:FaultyCartPole-v1`` (gymnasium imports the module first).  Faults are
drawn from the env's own seeded generator, so an episode is still a deterministic function of its
reset seed and actions (which exact resume relies on).

While the file named by ``$WM_JAX_FAULTY_RAISE_FILE`` exists, ``step()`` raises: the soak
benchmark's "environment exception" fault.
"""

from __future__ import annotations

import os

import gymnasium
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class FaultyCartPole(CartPoleEnv):
    def __init__(self, nan_obs_prob: float = 1e-3, nan_reward_prob: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.nan_obs_prob = nan_obs_prob
        self.nan_reward_prob = nan_reward_prob

    def step(self, action):
        trigger = os.environ.get("WM_JAX_FAULTY_RAISE_FILE")
        if trigger and os.path.exists(trigger):
            raise RuntimeError(f"simulated simulator crash ({trigger} exists)")
        obs, reward, terminated, truncated, info = super().step(action)
        obs = np.array(obs, np.float32)
        if self.np_random.random() < self.nan_obs_prob:
            obs[self.np_random.integers(0, obs.size)] = np.nan
        if self.np_random.random() < self.nan_reward_prob:
            reward = float("nan")
        return obs, reward, terminated, truncated, info


if "FaultyCartPole-v1" not in gymnasium.registry:
    gymnasium.register(
        "FaultyCartPole-v1",
        entry_point=FaultyCartPole,
        max_episode_steps=500,
        disable_env_checker=True,
    )
