"""The world model: encoder -> representation -> states -> dynamics / reward / continue / decoder.

One flax module whose parameter tree has one subtree per seed component, so per-component
gradient norms and optimiser masks read ``params['params'][name]`` directly:
``encoder``, ``representation``, ``dynamics``, ``reward_predictor``, ``continue_predictor``,
``decoder``.  The policy head and value function are separate modules with separate parameters
(and separate optimisers, seeds "Decision 3").
"""

from __future__ import annotations

import distrax
import flax.linen as nn
import jax

from wm_jax.networks.representation import RepresentationOutput
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

    def embed(self, obs: jax.Array, sample: bool = False) -> tuple[jax.Array, RepresentationOutput]:
        """Observations ``[..., *obs_shape]`` -> (features ``[..., F]``, representation output)."""
        features = self.encoder(obs)
        return features, self.representation(features, sample)

    def encode(self, obs: jax.Array, sample: bool = False) -> jax.Array:
        """Observations -> states, the path used when acting."""
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
        _, rep = self.embed(obs, sample=True)
        next_dist = self.predict_next(rep.states, action)
        return (
            next_dist.mean(),
            self.reward(rep.states).mean(),
            self.cont(rep.states).logits,
            self.decode(rep.states),
        )
