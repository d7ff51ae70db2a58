"""The world model: encoder -> representation -> states -> dynamics / reward / continue / decoder.

One flax module whose parameter tree has one subtree per seed component, so per-component
gradient norms and optimiser masks read ``params['params'][name]`` directly:
``encoder``, ``representation``, ``dynamics``, ``reward_predictor``, ``continue_predictor``,
``decoder``.  The policy head and value function are separate modules with separate parameters
(and separate optimisers, seeds "Decision 3").

A *recurrent* world model (the RSSM: ``representation`` = posterior ``q(z | h, e)``, ``dynamics``
= the recurrent core and prior) cannot encode one observation alone: its states come from
:mod:`wm_jax.observe`, which scans the per-step methods below along sequences and while acting.
"""

from __future__ import annotations

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from wm_jax.networks.representation import RepresentationOutput
from wm_jax.networks.rssm import latent_state
from wm_jax.types import SequenceContext

COMPONENTS = (
    "encoder",
    "representation",
    "dynamics",
    "reward_predictor",
    "continue_predictor",
    "decoder",
)


class WorldModel(nn.Module):
    encoder: nn.Module
    representation: nn.Module
    dynamics: nn.Module
    reward_predictor: nn.Module
    continue_predictor: nn.Module
    decoder: nn.Module

    @property
    def recurrent(self) -> bool:
        """True when states depend on the past (the RSSM), not on the current observation only."""
        return getattr(type(self.dynamics), "recurrent", False)

    def features(self, obs: jax.Array) -> jax.Array:
        """Observations ``[..., *obs_shape]`` -> encoder features ``[..., F]``."""
        return self.encoder(obs)

    def posterior(self, deter: jax.Array, features: jax.Array) -> jax.Array:
        """Recurrent models: ``q(z | h, e)`` log-probabilities from the representation."""
        return self.representation(deter, features)

    def embed(self, obs: jax.Array, sample: bool = False) -> tuple[jax.Array, RepresentationOutput]:
        """Observations ``[..., *obs_shape]`` -> (features ``[..., F]``, representation output)."""
        features = self.encoder(obs)
        return features, self.representation(features, sample)

    def encode(self, obs: jax.Array, sample: bool = False) -> jax.Array:
        """Observations -> states, the path used when acting (non-recurrent models)."""
        if self.recurrent:
            raise TypeError(
                "a recurrent world model (RSSM) has no per-observation encode(): its states "
                "depend on the past; use wm_jax.observe.observe_sequence / observe_step"
            )
        return self.representation.encode(self.encoder(obs), sample)

    def predict_next(
        self, state: jax.Array, action: jax.Array, context: SequenceContext | None = None
    ) -> distrax.Normal:
        return self.dynamics(state, action, context)

    def reward(self, state: jax.Array) -> distrax.Normal:
        return self.reward_predictor(state)

    def cont(self, state: jax.Array) -> distrax.Bernoulli:
        return self.continue_predictor(state)

    def decode(self, states: jax.Array) -> jax.Array:
        return self.decoder(states)

    def __call__(self, obs: jax.Array, action: jax.Array):
        """Touches every component once; used only to initialise parameters."""
        if self.recurrent:
            features = self.features(obs)
            deter = jnp.zeros((*features.shape[:-1], self.dynamics.deter), features.dtype)
            post = self.posterior(deter, features)
            states = latent_state(deter, jnp.exp(post))
        else:
            _, rep = self.embed(obs, sample=True)
            states = rep.states
        next_dist = self.predict_next(states, action)
        return (
            next_dist.mean(),
            self.reward(states).mean(),
            self.cont(states).logits,
            self.decode(states),
        )
