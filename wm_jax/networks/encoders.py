"""Encoders: observations -> features (seeds, "Interface 1")."""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from wm_jax.networks.common import MLP, Dense, get_activation


class MLPEncoder(nn.Module):
    """Observations ``[..., *obs_shape]`` (``obs_rank`` trailing axes, flattened) -> features
    ``[..., feature_dim]``."""

    feature_dim: int = 256
    hidden: Sequence[int] = (256,)
    activation: str = "elu"
    layer_norm: bool = True
    obs_rank: int = 1

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        # uint8 images get the CNN's [-0.5, 0.5] scaling (the running normaliser skips them).
        x = normalize_image(obs.reshape(obs.shape[: obs.ndim - self.obs_rank] + (-1,)))
        x = MLP(self.hidden, activation=self.activation, layer_norm=self.layer_norm)(x)
        x = Dense(self.feature_dim)(x)
        return get_activation(self.activation)(x)


def normalize_image(obs: jax.Array) -> jax.Array:
    """uint8 images in [0, 255] -> float32 in [-0.5, 0.5]; float images pass through."""
    if jnp.issubdtype(obs.dtype, jnp.integer):
        return obs.astype(jnp.float32) / 255.0 - 0.5
    return obs.astype(jnp.float32)


def cnn_strides(
    height: int, width: int, max_layers: int, min_resolution: int
) -> tuple[list[int], tuple[int, int]]:
    """The CNN's resolution schedule, shared by encoder and decoder so they always mirror each
    other: stride 2 while the map is larger than ``min_resolution``, else 1 ('SAME' padding).
    Returns the per-layer strides and the smallest feature map's ``(height, width)``."""
    strides = []
    for _ in range(max_layers):
        stride = 2 if min(height, width) > min_resolution else 1
        strides.append(stride)
        height, width = math.ceil(height / stride), math.ceil(width / stride)
    return strides, (height, width)


class CNNEncoder(nn.Module):
    """Images ``[..., H, W, C]`` -> features ``[..., feature_dim]``.

    Stride-2 convolutions while the image is larger than ``min_resolution`` (so 84×84 and 64×64
    are downsampled four times and a 10×10 MinAtar board only once), then a dense projection.
    """

    feature_dim: int = 256
    depth: int = 32
    max_layers: int = 4
    min_resolution: int = 6
    activation: str = "silu"
    layer_norm: bool = True

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        act = get_activation(self.activation)
        lead = obs.shape[:-3]
        x = normalize_image(obs).reshape((-1, *obs.shape[-3:]))
        strides, _ = cnn_strides(*obs.shape[-3:-1], self.max_layers, self.min_resolution)
        for i, stride in enumerate(strides):
            x = nn.Conv(self.depth * 2**i, (4, 4) if stride == 2 else (3, 3), strides=stride)(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = act(x)
        x = x.reshape((x.shape[0], -1))
        x = act(nn.Dense(self.feature_dim)(x))
        return x.reshape((*lead, self.feature_dim))
