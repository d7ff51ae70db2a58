"""The environment boundary: observations and rewards are checked before anything stores them.

A NaN observation that reaches the replay buffer poisons the normaliser, then every batch that
samples it, then the parameters.  :class:`EnvGuard` stops that at the first env step that
produces one, in one of three modes (``config.env_check``):

* ``"raise"`` (default): an :class:`InvalidEnvDataError` naming the env, the step, the offending
  values and the fix.
* ``"sanitize"``: non-finite observation entries become 0 (±Inf: the nearest finite bound),
  observations are clipped into the space's finite bounds, non-finite rewards become 0 and
  rewards are clipped to ``±config.max_abs_reward``; every repaired value is counted and logged
  (``env_invalid_obs`` / ``env_invalid_reward`` per log interval).
* ``"off"``: no checks (trusted, hot environments).

Out of range means outside the observation space's finite ``Box`` bounds (with a small tolerance
for float rounding) or a reward of magnitude above ``max_abs_reward``.
"""

from __future__ import annotations

import numpy as np

MODES = ("raise", "sanitize", "off")


class InvalidEnvDataError(ValueError):
    """An environment returned a NaN/Inf or out-of-range observation or reward."""


class EnvGuard:
    """Checks (and in ``"sanitize"`` mode repairs) batched observations and rewards.

    Args:
        mode: One of :data:`MODES`.
        env_id: For messages.
        obs_low, obs_high: The observation space's bounds (broadcastable to one observation);
            infinite entries are not checked.
        max_abs_reward: Rewards with a larger magnitude are out of range.
    """

    def __init__(
        self,
        mode: str,
        env_id: str,
        obs_low: np.ndarray,
        obs_high: np.ndarray,
        max_abs_reward: float = 1e6,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"env check mode must be one of {MODES}, got {mode!r}.")
        self.mode = mode
        self.env_id = env_id
        self.low = np.asarray(obs_low, np.float64)
        self.high = np.asarray(obs_high, np.float64)
        self.max_abs_reward = float(max_abs_reward)
        # Float rounding (float64 physics stored as float32) must not count as out of range.
        self._tol = 1e-5 * (
            1.0 + np.maximum(np.abs(np.nan_to_num(self.low)), np.abs(np.nan_to_num(self.high)))
        )
        self.counts = {"env_invalid_obs": 0, "env_invalid_reward": 0}

    def take_counts(self) -> dict[str, int]:
        """The repairs counted since the last call (then reset to zero)."""
        counts, self.counts = self.counts, dict.fromkeys(self.counts, 0)
        return counts

    def _fail(self, what: str, rows: np.ndarray, detail: str, step: str) -> None:
        raise InvalidEnvDataError(
            f"{self.env_id} returned {what} at {step} (env indices {rows.tolist()}): {detail}. "
            "Fix the environment, or set --config.env_check=sanitize to repair and count such "
            "values (non-finite -> 0, clipped into range), or --config.env_check=off to accept "
            "them unchecked."
        )

    def observations(self, obs: np.ndarray, step: str = "a step") -> np.ndarray:
        """Returns ``obs`` ``[N, ...]`` unchanged, repaired, or raises (see the module doc)."""
        if self.mode == "off":
            return obs
        n = obs.shape[0]
        flat = obs.reshape(n, -1)
        bad_values = np.zeros(flat.shape, bool)
        if np.issubdtype(obs.dtype, np.floating):
            nonfinite = ~np.isfinite(obs)
            if nonfinite.any():
                rows = np.flatnonzero(nonfinite.reshape(n, -1).any(axis=1))
                if self.mode == "raise":
                    sample = obs[rows[0]].reshape(-1)[nonfinite[rows[0]].reshape(-1)][:3]
                    self._fail("a non-finite observation", rows, f"values {sample.tolist()}", step)
                bad_values |= nonfinite.reshape(n, -1)
        with np.errstate(invalid="ignore"):
            values = obs.astype(np.float64)
            below = values < self.low - self._tol
            above = values > self.high + self._tol
        out_of_range = (below | above).reshape(n, -1) & ~bad_values
        if out_of_range.any():
            rows = np.flatnonzero(out_of_range.any(axis=1))
            if self.mode == "raise":
                i = rows[0]
                idx = np.flatnonzero(out_of_range[i])[:3]
                low = np.broadcast_to(self.low, obs.shape[1:]).reshape(-1)[idx]
                high = np.broadcast_to(self.high, obs.shape[1:]).reshape(-1)[idx]
                self._fail(
                    "an observation outside its observation_space",
                    rows,
                    f"entries {idx.tolist()} = {values[i].reshape(-1)[idx].tolist()} not in "
                    f"[{low.tolist()}, {high.tolist()}]",
                    step,
                )
            bad_values |= out_of_range
        if not bad_values.any():
            return obs
        self.counts["env_invalid_obs"] += int(bad_values.any(axis=1).sum())
        # NaN -> 0, ±Inf -> the largest finite values, then into the space's finite bounds.
        repaired = np.nan_to_num(
            values, nan=0.0, posinf=np.finfo(np.float32).max, neginf=np.finfo(np.float32).min
        )
        repaired = np.clip(repaired, self.low, self.high)
        return repaired.astype(obs.dtype)

    def rewards(self, reward: np.ndarray, step: str = "a step") -> np.ndarray:
        """Returns ``reward`` ``[N]`` unchanged, repaired, or raises (see the module doc)."""
        if self.mode == "off":
            return reward
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(reward) | (np.abs(reward) > self.max_abs_reward)
        if not bad.any():
            return reward
        rows = np.flatnonzero(bad)
        if self.mode == "raise":
            self._fail(
                "a non-finite or out-of-range reward",
                rows,
                f"rewards {reward[rows].tolist()} (limit |r| <= config.max_abs_reward="
                f"{self.max_abs_reward:g})",
                step,
            )
        self.counts["env_invalid_reward"] += int(bad.sum())
        repaired = np.where(np.isfinite(reward), reward, 0.0)
        return np.clip(repaired, -self.max_abs_reward, self.max_abs_reward).astype(reward.dtype)
