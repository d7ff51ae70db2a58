"""The recurrent state-space model (RSSM, Dreamer): a representation + dynamics pair that shares
one recurrent state (seeds, "RSSM as the alternative"; Hafner et al. 2019-2023).

The state is ``s_t = [h_t, z_t]``: a deterministic recurrent part ``h_t`` (``deter`` units) and a
stochastic part ``z_t``: ``stoch`` one-hot categoricals of ``classes`` classes, flattened, so
every head (reward, continue, decoder, policy, value) reads one vector of size
``deter + stoch·classes``, as with the other models::

    h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}])        (RSSMCore, the "dynamics" component)
    prior      p(z_t | h_t)                        (RSSMCore; imagination samples from it)
    posterior  q(z_t | h_t, e_t),  e_t = enc(o_t)  (RSSMPosterior, the "representation")

A window starts from ``h = 0`` (and so does an episode while acting); samples of ``z`` are
straight-through one-hots, and both categoricals mix in ``unimix`` of a uniform distribution so
the KL between them stays finite (DreamerV3).  The scan over a sequence lives outside the module
(:mod:`wm_jax.observe`), calling the per-step methods with explicit parameters, as imagination
does.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from wm_jax.networks.common import MLP, Dense
from wm_jax.types import SequenceContext


def unimix_logits(logits: jax.Array, unimix: float) -> jax.Array:
    """Log-probabilities of ``(1 - u)·softmax(logits) + u / classes`` over the last axis."""
    if unimix <= 0:
        return jax.nn.log_softmax(logits, -1)
    probs = (1 - unimix) * jax.nn.softmax(logits, -1) + unimix / logits.shape[-1]
    return jnp.log(probs)


def sample_one_hot(logits: jax.Array, key: jax.Array | None) -> jax.Array:
    """A straight-through one-hot sample of each categorical ``[..., K, C]`` (forward: one-hot;
    backward: the gradient of the probabilities); ``key=None`` takes the mode (no gradient)."""
    classes = logits.shape[-1]
    if key is None:
        return jax.nn.one_hot(jnp.argmax(logits, -1), classes, dtype=logits.dtype)
    one_hot = jax.nn.one_hot(jax.random.categorical(key, logits, -1), classes, dtype=logits.dtype)
    probs = jax.nn.softmax(logits, -1)
    return one_hot + probs - jax.lax.stop_gradient(probs)


def latent_logits(x: jax.Array, stoch: int, classes: int, unimix: float) -> jax.Array:
    """A net's flat output ``[..., K·C]`` as ``K`` categoricals' log-probabilities ``[..., K, C]``
    with ``unimix`` mixed in."""
    return unimix_logits(x.reshape((*x.shape[:-1], stoch, classes)), unimix)


def latent_state(deter: jax.Array, z: jax.Array) -> jax.Array:
    """The state the heads read: ``[h, z]`` with the categoricals ``z [..., K, C]`` flattened."""
    return jnp.concatenate([deter, z.reshape((*z.shape[:-2], -1))], -1)


@flax.struct.dataclass
class LatentPrior:
    """The RSSM's next-state distribution: the new recurrent state ``h'`` (deterministic) and the
    prior over ``z'``.  Quacks like the other dynamics' ``distrax.Normal`` where imagination uses
    it: ``mean()`` is ``[h', E[z']]``, ``sample(seed=k)`` is ``[h', one-hot z' ~ p]`` with a
    straight-through gradient."""

    deter: chex.Array  # [..., D]
    logits: chex.Array  # [..., K, C]  log-probabilities (unimix applied)

    def mean(self) -> chex.Array:
        return latent_state(self.deter, jnp.exp(self.logits))

    def mode(self) -> chex.Array:
        return latent_state(self.deter, sample_one_hot(self.logits, None))

    def sample(self, seed: chex.PRNGKey) -> chex.Array:
        return latent_state(self.deter, sample_one_hot(self.logits, seed))


class GRUCell(nn.Module):
    """``flax.linen.GRUCell`` (the same maths, parameter names and initialisers, so either's
    checkpoints load in the other, and the same float32 results) built from
    :class:`~wm_jax.networks.common.Dense`, so that its matmuls follow ``config.precision``
    like every other layer (flax's cell multiplies in float32 whatever the precision)::

        r = σ(W_ir x + b_ir + W_hr h)     z = σ(W_iz x + b_iz + W_hz h)
        n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))      h' = (1 − z) ⊙ n + z ⊙ h
    """

    features: int

    @nn.compact
    def __call__(self, h: jax.Array, x: jax.Array) -> jax.Array:
        x_init, h_init = nn.linear.default_kernel_init, nn.initializers.orthogonal()
        dense_x = lambda name: Dense(self.features, x_init, name=name)(x)  # noqa: E731
        dense_h = lambda name, bias=False: Dense(  # noqa: E731
            self.features, h_init, use_bias=bias, name=name
        )(h)
        r = jax.nn.sigmoid(dense_x("ir") + dense_h("hr"))
        z = jax.nn.sigmoid(dense_x("iz") + dense_h("hz"))
        n = jnp.tanh(dense_x("in") + r * dense_h("hn", bias=True))
        return (1.0 - z) * n + z * h


class RSSMCore(nn.Module):
    """The RSSM's transition: ``[h, z], a -> h' = GRU(h, [z, a])`` and the prior ``p(z' | h')``.
    Registered as ``model.dynamics="rssm"``; its ``__call__`` is the dynamics interface
    (``(state, action, context) -> LatentPrior``), so imagination needs no RSSM-specific code."""

    deter: int = 256
    stoch: int = 16
    classes: int = 16
    hidden: Sequence[int] = (256,)
    activation: str = "elu"
    layer_norm: bool = True
    unimix: float = 0.01
    recurrent = True  # class attribute: the world model carries a state between observations

    def setup(self):
        self.input_mlp = MLP(self.hidden, None, self.activation, self.layer_norm)
        self.gru = GRUCell(self.deter)
        self.prior_mlp = MLP(
            self.hidden, self.stoch * self.classes, self.activation, self.layer_norm
        )

    def prior(self, deter: jax.Array) -> jax.Array:
        """``p(z | h)`` as log-probabilities ``[..., K, C]``."""
        return latent_logits(self.prior_mlp(deter), self.stoch, self.classes, self.unimix)

    def __call__(
        self, state: jax.Array, action: jax.Array, context: SequenceContext | None = None
    ) -> LatentPrior:
        del context  # the recurrent state is the RSSM's context
        h, z = state[..., : self.deter], state[..., self.deter :]
        x = self.input_mlp(jnp.concatenate([z, action], -1))
        lead = h.shape[:-1]
        new_h = self.gru(h.reshape((-1, self.deter)), x.reshape((-1, x.shape[-1])))
        new_h = new_h.reshape((*lead, self.deter))
        return LatentPrior(new_h, self.prior(new_h))


class RSSMPosterior(nn.Module):
    """``q(z | h, e)``: the RSSM's representation (``model.representation="rssm"``) — what the
    encoder's features ``e`` of the current observation add to the recurrent state ``h``."""

    stoch: int = 16
    classes: int = 16
    hidden: Sequence[int] = (256,)
    activation: str = "elu"
    layer_norm: bool = True
    unimix: float = 0.01

    @nn.compact
    def __call__(self, deter: jax.Array, features: jax.Array) -> jax.Array:
        """Log-probabilities ``[..., K, C]`` of the posterior."""
        x = MLP(self.hidden, self.stoch * self.classes, self.activation, self.layer_norm)(
            jnp.concatenate([deter, features], -1)
        )
        return latent_logits(x, self.stoch, self.classes, self.unimix)
