"""Running observation normalisation (the seeds: "verify data normalization: states should be
roughly N(0, 1)").  The statistics are kept on the host by :class:`RunningMeanStd` (host loop,
float64 numpy) or inside the compiled device loop by :class:`DeviceNormalizer` (float32 jnp);
both update with the one :func:`chan_update`.  :func:`normalize` applies them on the device."""

from __future__ import annotations

import chex
import flax
import jax.numpy as jnp
import numpy as np


def chan_update(count, mean, m2, batch):
    """Chan et al.'s parallel update of a running ``(count, mean, m2)`` with a batch ``[k,
    *shape]``; returns the new ``(count, mean, m2)``.  Array-library agnostic (numpy on the host,
    jnp inside jitted code), so both normalisers run the same arithmetic in the same order."""
    k = batch.shape[0]
    b_mean = batch.mean(0)
    total = count + k
    delta = b_mean - mean
    return (
        total,
        mean + delta * k / total,
        m2 + ((batch - b_mean) ** 2).sum(0) + delta**2 * count * k / total,
    )


class RunningMeanStd:
    """Welford/Chan running mean and variance over a stream of ``[N, *shape]`` batches.

    ``enabled=False`` (e.g. for uint8 images, scaled by the encoder) keeps mean 0 / std 1.
    """

    def __init__(self, shape: tuple[int, ...], enabled: bool = True, clip: float = 10.0):
        self.shape = tuple(shape)
        self.enabled = enabled
        self.clip = float(clip)
        self.count = 0.0
        self.mean = np.zeros(self.shape, np.float64)
        self.m2 = np.zeros(self.shape, np.float64)

    def update(self, batch: np.ndarray) -> None:
        if not self.enabled:
            return
        batch = np.asarray(batch, np.float64).reshape((-1, *self.shape))
        if batch.shape[0] == 0:
            return
        self.count, self.mean, self.m2 = chan_update(self.count, self.mean, self.m2, batch)

    @property
    def std(self) -> np.ndarray:
        if self.count < 2:
            return np.ones(self.shape, np.float64)
        return np.sqrt(self.m2 / self.count) + 1e-6

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` as float32 arrays, to pass into jitted code."""
        if not self.enabled:
            return np.zeros(self.shape, np.float32), np.ones(self.shape, np.float32)
        return self.mean.astype(np.float32), self.std.astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"count": np.asarray(self.count), "mean": self.mean.copy(), "m2": self.m2.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        mean = np.asarray(state["mean"], np.float64)
        if mean.shape != self.shape:
            raise ValueError(
                f"normaliser state has shape {mean.shape}, expected {self.shape}: the checkpoint "
                "belongs to an environment with different observations"
            )
        self.count = float(np.asarray(state["count"]))
        self.mean = mean
        self.m2 = np.asarray(state["m2"], np.float64)


def normalize(obs, mean, std, clip: float = 10.0):
    """``clip((o - μ) / σ, ±clip)`` for float observations; integer (image) observations pass
    through untouched, the encoder scales them."""
    if jnp.issubdtype(obs.dtype, jnp.integer):
        return obs
    return jnp.clip((obs - mean) / std, -clip, clip)


# The device loop's normaliser: RunningMeanStd's statistics as a float32 pytree, updated inside
# jitted code.  Its checkpoint layout is RunningMeanStd's (wm_jax.device_loop writes it so).


@flax.struct.dataclass
class DeviceNormalizer:
    count: chex.Array
    mean: chex.Array
    m2: chex.Array


def normalizer_init(shape) -> DeviceNormalizer:
    return DeviceNormalizer(
        count=jnp.zeros((), jnp.float32),
        mean=jnp.zeros(shape, jnp.float32),
        m2=jnp.zeros(shape, jnp.float32),
    )


def normalizer_update(n: DeviceNormalizer, batch: chex.Array) -> DeviceNormalizer:
    """Chan et al.'s parallel update with a batch ``[N, *shape]`` (as ``RunningMeanStd``)."""
    count, mean, m2 = chan_update(n.count, n.mean, n.m2, batch.astype(jnp.float32))
    return DeviceNormalizer(count=count, mean=mean, m2=m2)


def normalizer_stats(n: DeviceNormalizer, enabled: bool) -> tuple[chex.Array, chex.Array]:
    """``(mean, std)`` as :meth:`RunningMeanStd.stats` gives them (identity when disabled)."""
    if not enabled:
        return jnp.zeros_like(n.mean), jnp.ones_like(n.mean)
    std = jnp.where(n.count < 2, 1.0, jnp.sqrt(n.m2 / jnp.maximum(n.count, 1.0)) + 1e-6)
    return n.mean, std
