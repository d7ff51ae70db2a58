"""Learning, not just running: a small world model fitted on a known linear system."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_spec, small_config

from wm_jax.types import Transition
from wm_jax.update import init_state, make_agent, world_model_update


def linear_system_batch(key, batch, a_matrix, b_matrix):
    k1, k2 = jax.random.split(key)
    obs = jax.random.normal(k1, (batch, a_matrix.shape[0]))
    action = jax.random.uniform(k2, (batch, b_matrix.shape[1]), minval=-1.0, maxval=1.0)
    next_obs = obs @ a_matrix.T + action @ b_matrix.T
    reward = -jnp.sum(next_obs**2, -1) / a_matrix.shape[0]
    return Transition(obs, action, reward, next_obs, jnp.ones(batch), jnp.ones(batch))


@pytest.mark.slow
def test_world_model_learns_a_linear_system():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    a_matrix = jnp.asarray(0.9 * q, jnp.float32)  # a stable rotation-like system
    b_matrix = jnp.asarray(rng.normal(size=(4, 1)) * 0.5, jnp.float32)
    spec = make_spec(obs_shape=(4,), action_dim=1, discrete=False)
    agent = make_agent(small_config(**{"world_model.lr": 1e-3}), spec)
    state = jax.jit(functools.partial(init_state, agent))(jax.random.PRNGKey(0))

    @jax.jit
    def train(state, key):
        def body(state, k):
            state, metrics = world_model_update(
                agent, state, linear_system_batch(k, 64, a_matrix, b_matrix)
            )
            return state, metrics

        return jax.lax.scan(body, state, jax.random.split(key, 100))

    history = []
    key = jax.random.PRNGKey(1)
    for _ in range(6):
        key, sub = jax.random.split(key)
        state, metrics = train(state, sub)
        history.append(jax.tree.map(np.asarray, metrics))
    first = {k: v[:5].mean() for k, v in history[0].items()}
    last = {k: v[-20:].mean() for k, v in history[-1].items()}
    assert last["dynamics_loss"] < first["dynamics_loss"] / 10, (first, last)
    assert last["decoder_loss"] < first["decoder_loss"] / 10, (first, last)
    assert last["reward_mae"] < first["reward_mae"] / 2, (first, last)
    assert last["state_std"] > 0.5  # no collapse
