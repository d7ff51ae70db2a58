"""Running observation normalisation (the seeds: "verify data normalization: states should be
roughly N(0, 1)").  Host-side statistics; the normalisation itself runs on the device."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


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
        n = batch.shape[0]
        if n == 0:
            return
        b_mean = batch.mean(0)
        b_m2 = ((batch - b_mean) ** 2).sum(0)
        total = self.count + n
        delta = b_mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + b_m2 + delta**2 * self.count * n / total
        self.count = total

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
