"""Open-loop prediction check (seeds' diagnostics): does the model's imagination stay close to
reality over a long horizon?

From the first real state of each replayed window, the dynamics roll ``T`` steps open-loop on
the real actions (no observation is fed back); predicted states are decoded to observations and
compared with the true ones.  The error by horizon step shows how far imagination can be
trusted: a curve that blows up well inside the imagination horizon means the actor is optimising
a fiction (failure signature "policy exploiting the model").
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp

from wm_jax.context_window import context_length, dynamics_step, empty_windows
from wm_jax.losses import open_loop_rollout
from wm_jax.networks.encoders import normalize_image
from wm_jax.observe import observe_sequence
from wm_jax.types import Params, Sequence


def open_loop_check(agent, wm_params: Params, batch: Sequence) -> dict[str, chex.Array]:
    """Rolls the dynamics open-loop along ``batch`` (observations already normalised).

    Returns:
      ``state_error_by_step`` ``[T]``: mean squared error between predicted and encoded true
      states at each step ``1..T``; ``obs_error_by_step`` ``[T]``: the same for decoded
      observations vs true observations; ``valid_by_step`` ``[T]``: how many windows are still
      inside their episode at each step (steps after an episode end are excluded);
      ``pred_obs`` ``[B, T, *obs]``: the decoded predictions ``ô_1..ô_T``.
    """
    wm = agent.nets.world_model
    # uint8 images stay uint8 (the encoder scales them; a float cast would feed it 0..255);
    # decoded images are compared in the encoder's [-0.5, 0.5] units.
    obs = batch.obs
    chex.assert_rank(batch.mask, 2)
    states = observe_sequence(wm, wm_params, obs, batch.action, None).states  # [B, T+1, S]

    def predict_mean(s, a):
        return wm.apply(wm_params, s, a, method=wm.predict_next).mean()

    def predict_window(window, s, a):  # context models roll on their own last K steps
        dist, window = dynamics_step(wm, wm_params, window, s, a)
        return dist.mean(), window

    uses_context = context_length(wm.dynamics) > 0
    # Windows end at episode boundaries (mask = 0 afterwards), so the rollout never needs the
    # restart-after-termination of the multi-step loss: pass continues of 1 to stay open-loop.
    predicted = open_loop_rollout(
        predict_window if uses_context else predict_mean,
        states,
        batch.action,
        jnp.ones_like(batch.mask),
        empty_windows(wm, states.shape[0]) if uses_context else None,
    )
    b, t, _ = predicted.shape
    decoded = wm.apply(wm_params, predicted.reshape(b * t, -1), method=wm.decode)
    decoded = decoded.reshape(b, t, *decoded.shape[1:])
    mask = batch.mask.astype(jnp.float32)
    count = jnp.maximum(mask.sum(0), 1.0)

    def by_step(pred, true):
        err = jnp.mean((pred - true).reshape(*mask.shape, -1) ** 2, axis=-1)
        return (err * mask).sum(0) / count

    return {
        "state_error_by_step": by_step(predicted, states[:, 1:]),
        "obs_error_by_step": by_step(decoded, normalize_image(obs[:, 1:])),
        "valid_by_step": mask.sum(0),
        "pred_obs": decoded,
    }


def make_open_loop_fn(agent) -> Callable[[Params, Sequence], dict[str, chex.Array]]:
    """``open_loop_check`` jitted for one agent."""
    return jax.jit(lambda wm_params, batch: open_loop_check(agent, wm_params, batch))
