"""Pendulum-v1 (continuous 1-D torque in [-2, 2], 3-D observations).

Run: python -m wm_jax.train --config=experiments/configs/pendulum.py
"""

from wm_jax.config import get_config as base_config


def get_config():
    c = base_config()
    c.env_id = "Pendulum-v1"
    c.total_env_steps = 30_000
    c.model.feature_dim = 128
    c.model.state_dim = 32
    c.model.hidden_dim = 128
    return c
