"""A host-side (numpy) replay buffer for ``N`` parallel environments.

Each env owns a ring of ``capacity // num_envs`` slots, so the transitions of one env are stored
in the order they happened and a window of consecutive slots is a window of consecutive steps.
Every slot keeps its own ``next_obs`` (rather than reading ``obs`` of the following slot) so a
transition stays correct at episode ends, where the next slot holds the reset observation, and
at the ring's oldest slot after wrap-around.  An episode-end flag (terminated or truncated)
stops sequence windows at episode boundaries.

Sampling takes the caller's ``np.random.Generator``: the samples are a pure function of the
buffer state and the generator, which is what makes :meth:`ReplayBuffer.state_dict` round trips
reproducible.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wm_jax.types import Sequence, Transition

__all__ = ["ReplayBuffer", "checked_return_gamma"]

_ARRAY_KEYS = ("obs", "next_obs", "action", "reward", "cont", "episode_end", "write_pos", "count")


def replay_bytes(capacity: int, obs_shape, obs_dtype, action_dim: int) -> int:
    """Bytes a full :class:`ReplayBuffer` of ``capacity`` transitions holds."""
    obs = int(np.prod(obs_shape, dtype=np.int64)) * np.dtype(obs_dtype).itemsize
    return int(capacity) * (2 * obs + 4 * int(action_dim) + 4 + 4 + 1)


def available_memory() -> int | None:
    """The machine's available memory in bytes (Linux ``MemAvailable``), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(needed: int) -> None:
    """Refuses a replay that cannot fit in memory when it is full (numpy reserves the arrays
    lazily, so it would otherwise fail only once filled, hours into a run)."""
    free = available_memory()
    if free is not None and needed > free:
        from wm_jax.config import ConfigError

        raise ConfigError(
            f"config.replay_capacity: a full replay needs {needed / 2**30:.1f} GiB and this "
            f"machine has {free / 2**30:.1f} GiB available; lower replay_capacity (or the "
            "observation size)"
        )


def checked_return_gamma(gamma: float) -> float:
    """``gamma`` as the discount a replay keeps episode returns with (both replays' rule)."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"return_gamma must lie in [0, 1], got {gamma}.")
    return float(gamma)


class ReplayBuffer:
    """Fixed-capacity ring buffer fed one transition per env per :meth:`add`.

    Args:
        capacity: Total transitions across envs; each env gets ``capacity // num_envs`` slots.
        num_envs: Number of parallel envs ``N`` writing to the buffer.
        obs_shape: Shape of one observation.
        obs_dtype: Storage dtype of observations (uint8 images stay uint8: 4x less memory).
        action_dim: Length ``A`` of the float action vectors.
        return_gamma: When set, the buffer keeps each stored transition's discounted return to
            its episode's termination, ``G_t = r_t + γ·G_{t+1}`` (``G = 0`` after the
            terminating step), once that episode has terminated (a time-limit truncation gives
            none: its tail is unknown), and sampled batches carry it as ``return_to_go`` /
            ``return_known`` (``config.critic.real_targets = "episode"``).  Derived from the
            stored rewards and flags, so checkpoints do not hold it.
    """

    def __init__(
        self,
        capacity: int,
        num_envs: int,
        obs_shape: tuple[int, ...],
        obs_dtype: Any,
        action_dim: int,
        return_gamma: float | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
        if capacity < num_envs:
            raise ValueError(
                f"capacity ({capacity}) must be at least num_envs ({num_envs}): the buffer "
                "holds capacity // num_envs transitions per env."
            )
        if action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {action_dim}.")
        self.num_envs = int(num_envs)
        self.slots_per_env = int(capacity) // self.num_envs
        self.capacity = self.slots_per_env * self.num_envs
        self.obs_shape = tuple(int(d) for d in obs_shape)
        self.obs_dtype = np.dtype(obs_dtype)
        self.action_dim = int(action_dim)

        n, s = self.num_envs, self.slots_per_env
        check_memory(replay_bytes(self.capacity, self.obs_shape, self.obs_dtype, action_dim))
        self._obs = np.zeros((n, s, *self.obs_shape), dtype=self.obs_dtype)
        self._next_obs = np.zeros((n, s, *self.obs_shape), dtype=self.obs_dtype)
        self._action = np.zeros((n, s, self.action_dim), dtype=np.float32)
        self._reward = np.zeros((n, s), dtype=np.float32)
        self._cont = np.zeros((n, s), dtype=np.float32)
        self._episode_end = np.zeros((n, s), dtype=bool)
        # Per env, because invalid steps are skipped per env and the rings fill unevenly.
        self._write_pos = np.zeros(n, dtype=np.int64)
        self._count = np.zeros(n, dtype=np.int64)
        self.return_gamma: float | None = None
        if return_gamma is not None:
            self.keep_returns(return_gamma)

    @property
    def nbytes(self) -> int:
        """Bytes the buffer holds when full (what a checkpoint of it needs)."""
        return replay_bytes(self.capacity, self.obs_shape, self.obs_dtype, self.action_dim)

    def __len__(self) -> int:
        """Number of stored transitions, across envs."""
        return int(self._count.sum())

    # ------------------------------------------------------------------ writing

    def _check(self, name: str, value: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        value = np.asarray(value)
        if value.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {value.shape}.")
        # Refuse lossy casts such as float observations into a uint8 buffer.
        if not np.can_cast(value.dtype, dtype, casting="same_kind"):
            raise ValueError(f"{name} has dtype {value.dtype}, which does not cast to {dtype}.")
        return value.astype(dtype, copy=False)

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        valid: np.ndarray | None = None,
    ) -> None:
        """Stores one transition per env (arrays with a leading ``[N]`` axis).

        ``next_obs`` must be the true next observation (the final one at an episode end).
        Envs whose ``valid`` entry is False write nothing this call.
        """
        n = self.num_envs
        obs_shape = (n, *self.obs_shape)
        obs = self._check("obs", obs, obs_shape, self.obs_dtype)
        next_obs = self._check("next_obs", next_obs, obs_shape, self.obs_dtype)
        action = self._check("action", action, (n, self.action_dim), np.dtype(np.float32))
        reward = self._check("reward", reward, (n,), np.dtype(np.float32))
        terminated = self._check("terminated", terminated, (n,), np.dtype(bool))
        truncated = self._check("truncated", truncated, (n,), np.dtype(bool))
        if valid is None:
            envs = np.arange(n)
        else:
            envs = np.flatnonzero(self._check("valid", valid, (n,), np.dtype(bool)))
        if envs.size == 0:
            return

        slots = self._write_pos[envs]
        self._obs[envs, slots] = obs[envs]
        self._next_obs[envs, slots] = next_obs[envs]
        self._action[envs, slots] = action[envs]
        self._reward[envs, slots] = reward[envs]
        self._cont[envs, slots] = 1.0 - terminated[envs].astype(np.float32)
        self._episode_end[envs, slots] = terminated[envs] | truncated[envs]
        self._write_pos[envs] = (slots + 1) % self.slots_per_env
        self._count[envs] = np.minimum(self._count[envs] + 1, self.slots_per_env)
        if self.return_gamma is not None:
            self._return_known[envs, slots] = False
            for env in envs[terminated[envs]]:
                self._backfill_returns(int(env), self._count[env] - 1)

    def keep_returns(self, gamma: float) -> None:
        """From now on keep each terminated episode's discounted returns (see ``return_gamma``),
        starting with those of the episodes already stored."""
        self.return_gamma = checked_return_gamma(gamma)
        shape = (self.num_envs, self.slots_per_env)
        self._return = np.zeros(shape, dtype=np.float32)
        self._return_known = np.zeros(shape, dtype=bool)
        self._recompute_returns()

    def _backfill_returns(self, env: int, last: int) -> None:
        """Writes the discounted return of every stored step of the episode that terminates at
        logical index ``last`` of ``env`` (back to its start or the oldest stored step)."""
        gamma, ret = self.return_gamma, 0.0
        for offset in range(last, -1, -1):
            slot = self._slot(env, offset)
            if offset < last and self._episode_end[env, slot]:
                break
            ret = float(self._reward[env, slot]) + gamma * ret
            self._return[env, slot] = ret
            self._return_known[env, slot] = True

    def _recompute_returns(self) -> None:
        """Every stored terminated episode's returns, from the stored rewards and flags."""
        self._return_known[:] = False
        for env in range(self.num_envs):
            slots = self._slot(env, np.arange(self._count[env]))
            for offset in np.flatnonzero(self._cont[env, slots] == 0.0):
                self._backfill_returns(env, int(offset))

    # ----------------------------------------------------------------- sampling

    def _require(self, needed: int) -> None:
        stored = len(self)
        if stored < needed:
            raise ValueError(
                f"Cannot sample: the replay buffer holds {stored} transitions but at least "
                f"{needed} are needed. Collect more data before training (raise the warmup / "
                "prefill steps)."
            )

    def _sample_starts(
        self, rng: np.random.Generator, batch_size: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Uniform over stored transitions: (env, logical index from the env's oldest)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        ends = np.cumsum(self._count)
        flat = rng.integers(0, ends[-1], size=batch_size)
        env = np.searchsorted(ends, flat, side="right")
        offset = flat - (ends[env] - self._count[env])
        return env, offset

    def _terminal_starts(
        self, rng: np.random.Generator, count: int, length: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """``count`` (env, start) pairs whose window of ``length`` steps holds a stored
        termination (``cont = 0``; a truncation is not one): a termination drawn uniformly, then
        its place in the window uniformly among those that keep the window inside its episode.
        None when no termination is stored."""
        env, slot = np.nonzero(self._cont == 0.0)
        offset = (slot - self._oldest_slot(env)) % self.slots_per_env
        stored = offset < self._count[env]
        if not stored.any():
            return None
        env, offset = env[stored], offset[stored]
        pick = rng.integers(0, env.size, size=count)
        env, end = env[pick], offset[pick]
        if length == 1:
            return env, end
        # The window may start up to length - 1 steps earlier, but not at or before the previous
        # episode's end, nor before the env's oldest stored step.
        back = np.arange(1, length)  # [L - 1]
        earlier = end[:, None] - back
        ended = (earlier >= 0) & self._episode_end[
            env[:, None], self._slot(env[:, None], np.maximum(earlier, 0))
        ]
        reach = np.where(ended.any(axis=1), ended.argmax(axis=1), length - 1)  # steps back allowed
        reach = np.minimum(reach, end)
        start = end - rng.integers(0, reach + 1)
        return env, start

    def _mixed_starts(
        self, rng: np.random.Generator, batch_size: int, length: int, terminal_fraction: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Uniform starts, the first ``round(terminal_fraction · batch_size)`` of them replaced by
        :meth:`_terminal_starts` (all uniform while no termination is stored)."""
        env, start = self._sample_starts(rng, batch_size)
        count = int(round(terminal_fraction * batch_size))
        if count > 0:
            terminal = self._terminal_starts(rng, count, length)
            if terminal is not None:
                env[:count], start[:count] = terminal
        return env, start

    def _oldest_slot(self, env: np.ndarray) -> np.ndarray:
        """Ring slot of the oldest stored transition of each ``env``."""
        return (self._write_pos[env] - self._count[env]) % self.slots_per_env

    def _slot(self, env: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """Ring slot of the ``offset``-th oldest stored transition of ``env``."""
        return (self._oldest_slot(env) + offset) % self.slots_per_env

    def sample_flat(
        self, rng: np.random.Generator, batch_size: int, terminal_fraction: float = 0.0
    ) -> Transition:
        """``batch_size`` transitions drawn uniformly (with replacement) from the buffer; with
        ``terminal_fraction > 0`` that share of them are stored terminations (while there are
        any)."""
        self._require(1)
        env, offset = self._mixed_starts(rng, batch_size, 1, terminal_fraction)
        slot = self._slot(env, offset)
        return Transition(
            obs=self._obs[env, slot],
            action=self._action[env, slot],
            reward=self._reward[env, slot],
            next_obs=self._next_obs[env, slot],
            cont=self._cont[env, slot],
            mask=np.ones(batch_size, dtype=np.float32),
            **self._returns(env, slot, None),
        )

    def sample_sequences(
        self,
        rng: np.random.Generator,
        batch_size: int,
        length: int,
        terminal_fraction: float = 0.0,
    ) -> Sequence:
        """``batch_size`` windows of ``length`` consecutive transitions of one env and episode.

        Start points are uniform over stored transitions; with ``terminal_fraction > 0`` that
        share of the windows instead holds a stored termination, at a uniform place in the
        window (rare events such as a cart leaving the track would otherwise be in a window
        once in hundreds of steps once the policy is good).  A window stops after its episode's
        last transition or at the env's newest transition (it never wraps into the oldest data);
        the rest is padding with ``mask = 0`` that repeats the last real values, and
        ``obs[:, t + 1]`` for the last real ``t`` is that transition's true ``next_obs``.
        """
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}.")
        if length > self.slots_per_env:
            raise ValueError(
                f"Sequence length {length} exceeds the {self.slots_per_env} transitions each env "
                "can hold; raise the capacity or shorten the sequences."
            )
        self._require(length)
        env, start = self._mixed_starts(rng, batch_size, length, terminal_fraction)
        steps = start[:, None] + np.arange(length)  # [B, T] logical indices
        count = self._count[env][:, None]
        in_ring = steps < count
        slots = self._slot(env[:, None], np.minimum(steps, count - 1))
        ends = self._episode_end[env[:, None], slots]
        # Step k is real if it is stored and no earlier step of the window ended its episode.
        ended_before = np.cumsum(ends, axis=1) - ends > 0
        mask = in_ring & ~ended_before
        num_real = mask.sum(axis=1)  # >= 1: the start itself is always real

        # Padded steps repeat the last real slot so no value is garbage.
        last = np.minimum(np.arange(length), num_real[:, None] - 1)
        slots = np.take_along_axis(slots, last, axis=1)
        rows = env[:, None]
        obs = np.empty((batch_size, length + 1, *self.obs_shape), dtype=self.obs_dtype)
        obs[:, :length] = self._obs[rows, slots]
        # From the last real step on, obs[t + 1] is that step's true next_obs, not the obs of the
        # following slot (which is a reset obs after an episode end, or not yet written).
        pad_rows, pad_cols = np.nonzero(~mask)
        obs[pad_rows, pad_cols] = self._next_obs[env[pad_rows], slots[pad_rows, pad_cols]]
        obs[:, length] = self._next_obs[env, slots[:, -1]]

        return Sequence(
            obs=obs,
            action=self._action[rows, slots],
            reward=self._reward[rows, slots],
            cont=self._cont[rows, slots],
            mask=mask.astype(np.float32),
            **self._returns(rows, slots, mask),
        )

    def _returns(self, env: np.ndarray, slot: np.ndarray, mask: np.ndarray | None) -> dict:
        """The batch's ``return_to_go`` / ``return_known`` fields (none without return_gamma);
        padded steps are never known."""
        if self.return_gamma is None:
            return {}
        known = self._return_known[env, slot]
        if mask is not None:
            known = known & mask
        return dict(return_to_go=self._return[env, slot], return_known=known.astype(np.float32))

    # ------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """The full state as numpy arrays and ints (no pickled objects), e.g. for orbax."""
        return {
            "obs": self._obs.copy(),
            "next_obs": self._next_obs.copy(),
            "action": self._action.copy(),
            "reward": self._reward.copy(),
            "cont": self._cont.copy(),
            "episode_end": self._episode_end.copy(),
            "write_pos": self._write_pos.copy(),
            "count": self._count.copy(),
            "num_envs": self.num_envs,
            "slots_per_env": self.slots_per_env,
            "action_dim": self.action_dim,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a :meth:`state_dict` exactly, including write positions and counts.

        Raises:
            ValueError: If a key is missing or the layout (envs, slots, shapes, dtypes) differs
                from this buffer's.
        """
        missing = [
            k for k in (*_ARRAY_KEYS, "num_envs", "slots_per_env", "action_dim") if k not in state
        ]
        if missing:
            raise ValueError(f"Replay state is missing keys {missing}.")
        layout = (int(state["num_envs"]), int(state["slots_per_env"]), int(state["action_dim"]))
        if layout != (self.num_envs, self.slots_per_env, self.action_dim):
            raise ValueError(
                f"Replay state has (num_envs, slots_per_env, action_dim) = {layout}, but this "
                f"buffer has {(self.num_envs, self.slots_per_env, self.action_dim)}; build the "
                "buffer with the capacity, num_envs and action_dim the state was saved with."
            )
        current = self._arrays()
        loaded = {}
        for key in _ARRAY_KEYS:
            value = np.asarray(state[key])
            want = current[key]
            if value.shape != want.shape or value.dtype != want.dtype:
                raise ValueError(
                    f"Replay state {key!r} has shape {value.shape} and dtype {value.dtype}, "
                    f"expected {want.shape} and {want.dtype} (observation shape/dtype mismatch?)."
                )
            loaded[key] = value.copy()
        count, pos = loaded["count"], loaded["write_pos"]
        s = self.slots_per_env
        if np.any(count < 0) or np.any(count > s) or np.any(pos < 0) or np.any(pos >= s):
            raise ValueError(f"Replay state has out-of-range counts {count} or positions {pos}.")
        for key, value in loaded.items():
            setattr(self, f"_{key}", value)
        if self.return_gamma is not None:
            self._recompute_returns()

    def _arrays(self) -> dict[str, np.ndarray]:
        return {key: getattr(self, f"_{key}") for key in _ARRAY_KEYS}
