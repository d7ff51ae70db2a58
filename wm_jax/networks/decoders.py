"""Decoders: states -> reconstructed observations (seeds, "Loss 4")."""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from wm_jax.networks.common import MLP, get_activation
from wm_jax.networks.encoders import cnn_strides


class MLPDecoder(nn.Module):
    """States ``[..., S]`` -> vector observations ``[..., *obs_shape]``."""

    obs_shape: Sequence[int]
    hidden: Sequence[int] = (256, 256)
    activation: str = "elu"
    layer_norm: bool = True

    @nn.compact
    def __call__(self, states: jax.Array) -> jax.Array:
        size = math.prod(self.obs_shape)
        x = MLP(self.hidden, size, self.activation, self.layer_norm)(states)
        return x.reshape((*states.shape[:-1], *self.obs_shape))


class CNNDecoder(nn.Module):
    """States -> images ``[..., H, W, C]`` in the encoder's normalised range ([-0.5, 0.5] for
    uint8 input).

    Mirrors :class:`wm_jax.networks.encoders.CNNEncoder`: a dense layer to the encoder's smallest
    feature map, then stride-2 transposed convolutions; a final resize fixes odd sizes (84 -> 88).
    """

    obs_shape: Sequence[int]
    depth: int = 32
    max_layers: int = 4
    min_resolution: int = 6
    activation: str = "silu"
    layer_norm: bool = True

    @nn.compact
    def __call__(self, states: jax.Array) -> jax.Array:
        act = get_activation(self.activation)
        height, width, channels = self.obs_shape
        strides, (h0, w0) = cnn_strides(height, width, self.max_layers, self.min_resolution)
        lead = states.shape[:-1]
        top = self.depth * 2 ** (self.max_layers - 1)
        x = nn.Dense(h0 * w0 * top)(states.reshape((-1, states.shape[-1])))
        x = act(x).reshape((-1, h0, w0, top))
        for i, stride in reversed(list(enumerate(strides))):
            last = i == 0
            feats = channels if last else self.depth * 2 ** (i - 1)
            x = nn.ConvTranspose(
                feats, (4, 4) if stride == 2 else (3, 3), strides=(stride, stride)
            )(x)
            if not last:
                if self.layer_norm:
                    x = nn.LayerNorm()(x)
                x = act(x)
        if x.shape[1:3] != (height, width):
            x = jax.image.resize(x, (x.shape[0], height, width, channels), "linear")
        return x.reshape((*lead, height, width, channels)).astype(jnp.float32)
