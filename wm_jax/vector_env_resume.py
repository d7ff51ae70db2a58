"""Exact resume of a :class:`~wm_jax.vector_env.VectorEnv` from a checkpoint, by replaying the
current episodes' actions (:class:`ReplayResume`, which VectorEnv inherits).

Why replay: gymnasium's autoresets are unseeded and continue each env's RNG, whose state cannot
be saved in general (gym envs are not serialisable, and checkpoints must not hold pickles).  With
one explicit seed per episode (:func:`wm_jax.vector_env.episode_seed`), an env's state is a pure
function of ``(seed, i, e)`` and the actions taken since that episode's reset.  VectorEnv records
those actions (as environment actions) and the episode counters; :meth:`~ReplayResume.state_dict`
exports them as plain numpy arrays and :meth:`~ReplayResume.load_state_dict` rebuilds every env
by resetting it with its current episode's seed and replaying the recorded actions (through the
wrappers too, so e.g. ``TimeLimit``'s elapsed steps are restored).  A run resumed from a
checkpoint then sees bit-identical transitions to an uninterrupted run, in both ``sync`` and
``async`` mode.

This relies on the env being deterministic given its reset seed and actions, with nothing
carried over from earlier episodes (true of gymnasium's own envs); ``load_state_dict`` checks the
replayed returns, lengths and observations against the saved ones and raises if they differ.
The cost is memory and restore time proportional to the current episodes' lengths: an env whose
episodes never end (no time limit) keeps a growing action history.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wm_jax.env_spec import to_env_action

_STATE_KEYS = (
    "seed",
    "num_envs",
    "episode",
    "episode_return",
    "episode_length",
    "actions",
    "action_lengths",
    "obs",
)


class ReplayResume:
    """The checkpoint half of :class:`~wm_jax.vector_env.VectorEnv`: its episode counters and
    action histories out (:meth:`state_dict`) and back in by replay (:meth:`load_state_dict`).
    Reads and writes the VectorEnv's own fields (``_env``, ``_spec``, ``_seed``, ``num_envs``,
    ``_episodes``, ``_returns``, ``_lengths``, ``_history``, ``_env_action_shape`` and
    ``_env_action_dtype``, ``_obs``, ``guard``) and resets through its ``_reset_envs``."""

    def state_dict(self) -> dict[str, np.ndarray | int]:
        """Everything needed to rebuild the envs exactly, as numpy arrays and ints (no pickle).

        Keys: ``seed`` and ``num_envs`` (ints); ``episode`` (int64 ``[N]``, index of each env's
        current episode); ``episode_return`` (float64 ``[N]``) and ``episode_length`` (int64
        ``[N]``) of the current episodes; ``actions`` (``[N, max_len, *action_shape]`` in the env
        action dtype, zero-padded, ``max_len >= 1``) with ``action_lengths`` (int64 ``[N]``), the
        env actions taken since each current episode's reset; ``obs`` (``[N, *obs_shape]``), the
        observations to act on next, used to check the replay.

        Raises:
            RuntimeError: Before the first :meth:`reset`.
        """
        if self._obs is None:
            raise RuntimeError("Call reset() before state_dict().")
        max_len = max(1, int(self._lengths.max()))
        actions = np.zeros(
            (self.num_envs, max_len, *self._env_action_shape), dtype=self._env_action_dtype
        )
        for i, length in enumerate(self._lengths):
            actions[i, :length] = self._history[i, :length]
        return {
            "seed": self._seed,
            "num_envs": self.num_envs,
            "episode": self._episodes.copy(),
            "episode_return": self._returns.copy(),
            "episode_length": self._lengths.copy(),
            "actions": actions,
            "action_lengths": self._lengths.copy(),
            "obs": self._obs.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> np.ndarray:
        """Rebuilds the envs from a :meth:`state_dict`; returns the observations to act on next.

        Each env is reset with its current episode's seed and its recorded actions are replayed,
        so the envs (wrappers such as ``TimeLimit`` included), episode counters, returns and
        lengths are exactly as when the state was saved; stepping on with the same actions gives
        bit-identical transitions.  Works in ``sync`` and ``async`` mode.  Envs whose history is
        shorter than the longest are stepped with a filler action until they are reset for their
        own replay (a vector env can only step all envs together), which the seeded reset
        undoes.

        Raises:
            ValueError: If a key is missing or the state does not fit this env (num_envs, seed,
                action or observation shape/dtype, inconsistent counters).
            RuntimeError: If the replay does not reproduce the saved returns, lengths or
                observations (the env is not deterministic given its seed and actions); the
                envs are then in an unspecified state.
        """
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"Env state is missing keys {missing}.")
        n = self.num_envs
        if int(state["num_envs"]) != n:
            raise ValueError(
                f"Env state was saved with num_envs={int(state['num_envs'])}, but this VectorEnv "
                f"has num_envs={n}; build it with the num_envs the state was saved with."
            )
        if int(state["seed"]) != self._seed:
            raise ValueError(
                f"Env state was saved with seed={int(state['seed'])}, but this VectorEnv has "
                f"seed={self._seed}; build it with the seed the state was saved with."
            )
        actions = np.asarray(state["actions"])
        want_actions = f"[{n}, max_len >= 1, *{self._env_action_shape}] {self._env_action_dtype}"
        if (
            actions.ndim != 2 + len(self._env_action_shape)
            or actions.shape[0] != n
            or actions.shape[1] < 1
            or tuple(actions.shape[2:]) != self._env_action_shape
            or actions.dtype != self._env_action_dtype
        ):
            raise ValueError(
                f"Env state 'actions' has shape {actions.shape} and dtype {actions.dtype}, "
                f"expected {want_actions} (a different env or action space?)."
            )
        arrays = {}
        for key, shape, dtype in (
            ("episode", (n,), np.int64),
            ("episode_return", (n,), np.float64),
            ("episode_length", (n,), np.int64),
            ("action_lengths", (n,), np.int64),
            ("obs", (n, *self._spec.obs_shape), self._spec.obs_dtype),
        ):
            value = np.asarray(state[key])
            if value.shape != shape or value.dtype != np.dtype(dtype):
                raise ValueError(
                    f"Env state {key!r} has shape {value.shape} and dtype {value.dtype}, "
                    f"expected {shape} and {np.dtype(dtype)} (a different env?)."
                )
            arrays[key] = value.copy()
        lengths = arrays["action_lengths"]
        if (
            np.any(arrays["episode"] < 0)
            or np.any(lengths < 0)
            or np.any(lengths > actions.shape[1])
            or not np.array_equal(lengths, arrays["episode_length"])
        ):
            raise ValueError(
                f"Env state has inconsistent counters: episode={arrays['episode']}, "
                f"episode_length={arrays['episode_length']}, action_lengths={lengths} for "
                f"{actions.shape[1]} stored actions."
            )

        self._episodes = arrays["episode"]
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self._history = np.zeros(
            (n, max(16, actions.shape[1]), *self._env_action_shape), dtype=self._env_action_dtype
        )
        self._obs = None  # unusable until the replay succeeds
        obs, returns = self._replay(actions, lengths)
        for what, got, saved in (
            ("episode returns", returns, arrays["episode_return"]),
            ("observations", obs, arrays["obs"]),
        ):
            if got.tobytes() != saved.tobytes():
                raise RuntimeError(
                    f"Replaying the saved actions did not reproduce the saved {what}: the env is "
                    "not deterministic given its reset seed and actions, so it cannot be "
                    "resumed exactly."
                )
        for i, length in enumerate(lengths):
            self._history[i, :length] = actions[i, :length]
        self._returns[:] = returns
        self._lengths[:] = lengths
        self._obs = obs
        return obs.copy()

    def _replay(self, actions: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Resets every env with its current episode seed and replays ``actions[i, :len[i]]``.

        All envs step together for ``L = max(lengths)`` steps; env ``i``'s episode is (re)started
        at replay step ``L - lengths[i]`` so its replay ends with everyone else's.  Before that it
        is stepped with a filler action and reset whenever the filler episode ends.
        """
        n, total = self.num_envs, int(lengths.max())
        start = total - lengths
        filler = to_env_action(np.zeros((n, self._spec.action_dim)), self._spec).astype(
            self._env_action_dtype
        )
        obs = self._reset_envs(np.ones(n, dtype=bool))
        returns = np.zeros(n, dtype=np.float64)
        filler_done = np.zeros(n, dtype=bool)
        for k in range(total + 1):
            reset = filler_done | ((start == k) & (k > 0))
            if reset.any():
                obs[reset] = self._reset_envs(reset)[reset]
            if k == total:
                break
            live = start <= k
            step_actions = filler.copy()
            rows = np.flatnonzero(live)
            step_actions[rows] = actions[rows, k - start[rows]]
            obs, reward, terminated, truncated, _ = self._env.step(step_actions)
            # The same guard as step(), so sanitised runs replay to the same saved values.
            obs = self.guard.observations(np.array(obs, dtype=self._spec.obs_dtype))
            reward = self.guard.rewards(np.asarray(reward, dtype=np.float32))
            done = np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool)
            returns[live] += reward[live]
            if np.any(done & live):
                raise RuntimeError(
                    f"Replaying the saved actions ended an episode early (envs "
                    f"{np.flatnonzero(done & live).tolist()}, replay step {k}): the env is not "
                    "deterministic given its reset seed and actions, so it cannot be resumed "
                    "exactly."
                )
            filler_done = done
        return obs, returns
