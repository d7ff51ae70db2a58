"""Observations -> states, along replayed sequences and step by step while acting.

For the per-observation models (autoencoder, VAE) a state is ``encode(o_t)``.  A recurrent world
model (the RSSM, :mod:`wm_jax.networks.rssm`) needs the past as well::

    h_0 = 0,                        z_0 ~ q(z | h_0, e_0)
    h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}]),  prior p(z | h_t),  z_t ~ q(z | h_t, e_t)

so its states come from a ``lax.scan`` over the sequence (training, imagination start states,
critic targets, the open-loop check) or from a carried state while acting, reset where an
episode begins.  Both paths go through the same per-step function, so a window and an episode
observe the same way.  The scan calls the world model with explicit parameters, like
imagination, rather than lifting it into the module.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from wm_jax.networks.representation import RepresentationOutput
from wm_jax.networks.rssm import latent_state, sample_one_hot
from wm_jax.types import Params


class Observed(NamedTuple):
    """States of a sequence batch and what the world-model loss needs besides them."""

    features: chex.Array  # [B, T+1, F]  encoder features
    states: chex.Array  # [B, T+1, S]
    rep: RepresentationOutput | None = None  # per-observation models: the learner's output
    post_logits: chex.Array | None = None  # RSSM: q(z_t | h_t, e_t) log-probs [B, T+1, K, C]
    prior_logits: chex.Array | None = None  # RSSM: p(z_t | h_t) of steps 1..T  [B, T, K, C]


def _latent(deter: chex.Array, post: chex.Array, key: chex.PRNGKey | None) -> chex.Array:
    return latent_state(deter, sample_one_hot(post, key))


def observe_sequence(
    wm, wm_params: Params, obs: chex.Array, actions: chex.Array, key: chex.PRNGKey | None
) -> Observed:
    """States of ``obs [B, T+1, ...]`` reached with ``actions [B, T, A]``.

    ``key`` samples (VAE states, RSSM latents with a straight-through gradient); ``None`` takes
    means / modes, as when acting deterministically."""
    sample = key is not None
    if not wm.recurrent:
        rngs = {"sample": key} if sample else {}
        features, rep = wm.apply(wm_params, obs, sample, method=wm.embed, rngs=rngs)
        return Observed(features, rep.states, rep=rep)
    chex.assert_rank(actions, 3)
    b, t1 = obs.shape[:2]
    deter_size = wm.dynamics.deter
    features = wm.apply(wm_params, obs, method=wm.features)  # [B, T+1, F]
    # Keys are split either way so the scan has one body; without sampling they go unused.
    keys = jax.random.split(key if sample else jax.random.PRNGKey(0), t1)

    def latent(deter, post, step_key):
        return _latent(deter, post, step_key if sample else None)

    deter0 = jnp.zeros((b, deter_size), features.dtype)
    post0 = wm.apply(wm_params, deter0, features[:, 0], method=wm.posterior)
    state0 = latent(deter0, post0, keys[0])

    def step(state, inputs):
        action, feat, step_key = inputs
        prior = wm.apply(wm_params, state, action, method=wm.predict_next)
        post = wm.apply(wm_params, prior.deter, feat, method=wm.posterior)
        nxt = latent(prior.deter, post, step_key)
        return nxt, (nxt, post, prior.logits)

    swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    _, (states, posts, priors) = jax.lax.scan(
        step, state0, (swap(actions), swap(features[:, 1:]), keys[1:])
    )
    return Observed(
        features=features,
        states=jnp.concatenate([state0[:, None], swap(states)], 1),
        post_logits=jnp.concatenate([post0[:, None], swap(posts)], 1),
        prior_logits=swap(priors),
    )


def observe_step(
    wm,
    wm_params: Params,
    prev_state: chex.Array,
    prev_action: chex.Array,
    obs: chex.Array,
    is_first: chex.Array,
    key: chex.PRNGKey | None,
) -> chex.Array:
    """The state ``[N, S]`` after observing ``obs [N, ...]``, having been in ``prev_state`` and
    taken ``prev_action``; where ``is_first`` (an episode starts) the past is dropped, ``h = 0``,
    exactly as at the start of a sequence in :func:`observe_sequence`."""
    if not wm.recurrent:
        return wm.apply(wm_params, obs, False, method=wm.encode)
    deter = wm.apply(wm_params, prev_state, prev_action, method=wm.predict_next).deter
    deter = jnp.where(is_first[:, None], jnp.zeros_like(deter), deter)
    features = wm.apply(wm_params, obs, method=wm.features)
    return _latent(deter, wm.apply(wm_params, deter, features, method=wm.posterior), key)
