"""Gymnasium environments behind the action/observation conventions of :mod:`wm_jax.types`.

The agent always speaks float action vectors (one-hot for ``Discrete``, ``[-1, 1]`` for a
``Box``); this module converts them to what the environment expects and back, validates the
spaces once at start-up (:func:`spec_from_spaces`, :func:`make_env_spec`) and steps a batch of
environments (:class:`VectorEnv`).

Autoreset
---------
:class:`VectorEnv` builds its gymnasium vector env with
``autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP`` (gymnasium >= 1.1).  In that mode the
step that ends an episode returns the *reset* observation as ``obs`` and puts the true final
observation in ``info["final_obs"]`` (masked by ``info["_final_obs"]``).  We chose it over the
default ``NEXT_STEP`` because every call to ``step`` is then a real transition for every env: no
action is silently ignored, no step has to be discarded, and the batch stays dense.
:meth:`VectorEnv.step` substitutes ``final_obs`` into ``next_obs`` so a transition never crosses
an episode boundary (``next_obs`` is never a reset observation).  ``EnvTransition.valid`` is kept
in the output (always True here) so consumers such as the replay buffer keep one interface if a
mode that produces non-transitions is ever used.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import gymnasium
import numpy as np
from gymnasium import spaces

__all__ = [
    "EnvSpec",
    "EnvTransition",
    "StepOutput",
    "UnsupportedSpaceError",
    "VectorEnv",
    "from_env_action",
    "make_env_spec",
    "spec_from_spaces",
    "to_env_action",
]

_VECTOR_MODES = ("sync", "async")


class UnsupportedSpaceError(ValueError):
    """An environment's observation or action space cannot be used by wm_jax."""


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """What the agent needs to know about an environment's spaces.

    Attributes:
        obs_shape: Shape of one observation.
        obs_dtype: Dtype of observations (a float dtype, or uint8 for images).
        action_dim: Length of the agent's float action vector: ``n`` for ``Discrete(n)``, the
            box dimension for a 1-D ``Box``.
        discrete: Whether the action space is ``Discrete``.
        action_low: Box lower bounds (``[action_dim]``), ``None`` for ``Discrete``.
        action_high: Box upper bounds (``[action_dim]``), ``None`` for ``Discrete``.
        action_start: First integer action of a ``Discrete`` space (0 for a ``Box``).
    """

    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    action_dim: int
    discrete: bool
    action_low: np.ndarray | None = None
    action_high: np.ndarray | None = None
    action_start: int = 0

    # ndarray fields make the generated __eq__ ambiguous; compare by value instead.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EnvSpec):
            return NotImplemented

        def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
            return (a is None and b is None) or (
                a is not None and b is not None and np.array_equal(a, b)
            )

        return (
            self.obs_shape == other.obs_shape
            and self.obs_dtype == other.obs_dtype
            and self.action_dim == other.action_dim
            and self.discrete == other.discrete
            and self.action_start == other.action_start
            and same(self.action_low, other.action_low)
            and same(self.action_high, other.action_high)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable array fields: not hashable


def spec_from_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> EnvSpec:
    """Validates gymnasium spaces and summarises them as an :class:`EnvSpec`.

    Supported: a ``Box`` observation of any shape with a float or uint8 dtype, and either a
    ``Discrete`` action space (any ``start``) or a 1-D float ``Box`` with finite bounds.

    Raises:
        UnsupportedSpaceError: For any other space, naming it and the usual fix.
    """
    if not isinstance(observation_space, spaces.Box):
        hint = (
            "wrap the env with gymnasium.wrappers.FlattenObservation to turn it into a Box"
            if isinstance(observation_space, (spaces.Dict, spaces.Tuple))
            else "wrap the env with an observation wrapper that produces a Box "
            "(e.g. gymnasium.wrappers.FlattenObservation, which one-hot encodes Discrete)"
        )
        raise UnsupportedSpaceError(
            f"Unsupported observation space {observation_space}: wm_jax supports a Box "
            f"observation (float or uint8 dtype); {hint}."
        )
    obs_dtype = np.dtype(observation_space.dtype)
    if not (np.issubdtype(obs_dtype, np.floating) or obs_dtype == np.uint8):
        raise UnsupportedSpaceError(
            f"Unsupported observation dtype {obs_dtype} in {observation_space}: wm_jax supports "
            "float observations or uint8 images; wrap the env with "
            "gymnasium.wrappers.DtypeObservation(env, np.float32)."
        )

    if isinstance(action_space, spaces.Discrete):
        return EnvSpec(
            obs_shape=tuple(observation_space.shape),
            obs_dtype=obs_dtype,
            action_dim=int(action_space.n),
            discrete=True,
            action_start=int(action_space.start),
        )
    if isinstance(action_space, spaces.Box):
        if len(action_space.shape) != 1:
            raise UnsupportedSpaceError(
                f"Unsupported action space {action_space}: a Box action must be 1-D, got shape "
                f"{action_space.shape}; wrap the env with an action wrapper that flattens it."
            )
        if not np.issubdtype(action_space.dtype, np.floating):
            raise UnsupportedSpaceError(
                f"Unsupported action space {action_space}: a Box action must have a float dtype."
            )
        low = np.asarray(action_space.low, dtype=np.float64)
        high = np.asarray(action_space.high, dtype=np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low < high)):
            raise UnsupportedSpaceError(
                f"Unsupported action space {action_space}: a Box action needs finite bounds with "
                "low < high, because the agent's [-1, 1] actions are rescaled to them; wrap the "
                "env with gymnasium.wrappers.RescaleAction / ClipAction, or discretise it with "
                "gymnasium.wrappers.DiscretizeAction."
            )
        return EnvSpec(
            obs_shape=tuple(observation_space.shape),
            obs_dtype=obs_dtype,
            action_dim=int(action_space.shape[0]),
            discrete=False,
            action_low=low,
            action_high=high,
        )
    raise UnsupportedSpaceError(
        f"Unsupported action space {action_space}: wm_jax supports Discrete or a 1-D Box with "
        "finite bounds; wrap the env (e.g. flatten a MultiDiscrete into one Discrete, or use "
        "gymnasium.wrappers.DiscretizeAction) to get one of those."
    )


def _check_actions(actions: np.ndarray, spec: EnvSpec) -> np.ndarray:
    actions = np.asarray(actions)
    if actions.ndim != 2 or actions.shape[1] != spec.action_dim:
        raise ValueError(f"Expected actions of shape [N, {spec.action_dim}], got {actions.shape}.")
    return actions


def to_env_action(actions: np.ndarray, spec: EnvSpec) -> np.ndarray:
    """Converts the agent's float actions ``[N, A]`` to environment actions.

    ``Discrete``: argmax (so one-hot vectors and logits both work) plus the space's ``start``,
    giving int64 ``[N]``.  ``Box``: affine map of ``[-1, 1]`` to ``[low, high]``, clipped so
    exploration noise never leaves the box, giving float32 ``[N, A]``.
    """
    actions = _check_actions(actions, spec)
    if spec.discrete:
        return np.argmax(actions, axis=-1).astype(np.int64) + spec.action_start
    unit = np.clip(actions.astype(np.float64), -1.0, 1.0)
    scaled = spec.action_low + (unit + 1.0) * 0.5 * (spec.action_high - spec.action_low)
    return np.clip(scaled, spec.action_low, spec.action_high).astype(np.float32)


def from_env_action(env_actions: np.ndarray, spec: EnvSpec) -> np.ndarray:
    """Inverse of :func:`to_env_action`: environment actions to float32 agent actions ``[N, A]``.

    ``Discrete``: integer ``[N]`` to one-hot.  ``Box``: ``[low, high]`` to ``[-1, 1]`` (clipped).
    """
    env_actions = np.asarray(env_actions)
    if spec.discrete:
        index = env_actions.reshape(-1).astype(np.int64) - spec.action_start
        if np.any(index < 0) or np.any(index >= spec.action_dim):
            raise ValueError(
                f"Discrete actions must lie in [{spec.action_start}, "
                f"{spec.action_start + spec.action_dim}), got {env_actions}."
            )
        return np.eye(spec.action_dim, dtype=np.float32)[index]
    env_actions = _check_actions(env_actions, spec).astype(np.float64)
    unit = 2.0 * (env_actions - spec.action_low) / (spec.action_high - spec.action_low) - 1.0
    return np.clip(unit, -1.0, 1.0).astype(np.float32)


def _unknown_env_error(env_id: str, err: Exception) -> ValueError:
    return ValueError(
        f"Unknown or unavailable environment id {env_id!r}: {err}. Use a registered id "
        "(e.g. 'CartPole-v1'); gymnasium.pprint_registry() lists them."
    )


def make_env_spec(env_id: str, env_kwargs: dict[str, Any] | None = None) -> EnvSpec:
    """Makes one env, reads its spaces, closes it: validates an env id before training starts.

    Raises:
        ValueError: If ``env_id`` is not registered.
        UnsupportedSpaceError: If its spaces are not supported.
    """
    try:
        env = gymnasium.make(env_id, **(env_kwargs or {}))
    except (gymnasium.error.UnregisteredEnv, gymnasium.error.DeprecatedEnv) as err:
        raise _unknown_env_error(env_id, err) from err
    try:
        return spec_from_spaces(env.observation_space, env.action_space)
    finally:
        env.close()


class EnvTransition(NamedTuple):
    """One transition per env, all ``[N, ...]`` numpy arrays.

    The field order matches :meth:`wm_jax.replay.ReplayBuffer.add`, so
    ``buffer.add(*out.transition)`` stores a step.
    """

    obs: np.ndarray  # [N, *obs_shape]  the observation the action was taken in
    action: np.ndarray  # [N, A] float32, the agent's action as given
    reward: np.ndarray  # [N] float32
    next_obs: np.ndarray  # [N, *obs_shape]  true next obs (final obs at episode end)
    terminated: np.ndarray  # [N] bool
    truncated: np.ndarray  # [N] bool
    valid: np.ndarray  # [N] bool  False for a step that is not a real transition


class StepOutput(NamedTuple):
    """What :meth:`VectorEnv.step` returns."""

    transition: EnvTransition
    obs: np.ndarray  # [N, *obs_shape]  to act on next: the reset obs where an episode just ended
    episode_returns: list[float]  # undiscounted returns of episodes that finished this step
    episode_lengths: list[int]  # their lengths in steps


class VectorEnv:
    """``N`` copies of a gymnasium env stepped together, in wm_jax's conventions.

    Args:
        env_id: A registered gymnasium id.
        num_envs: Number of parallel envs ``N``.
        seed: Env ``i`` is reset with ``seed + i`` on the first :meth:`reset`; later resets
            (including autoresets) continue each env's own RNG, so a seed fixes the trajectory
            for a fixed sequence of actions.
        mode: ``"sync"`` (in-process) or ``"async"`` (one subprocess per env).
        env_kwargs: Keyword arguments for ``gymnasium.make`` (e.g. ``max_episode_steps``).

    Raises:
        ValueError: Unknown ``env_id`` or ``mode``, or ``num_envs < 1``.
        UnsupportedSpaceError: If the env's spaces are not supported.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        seed: int,
        mode: str = "sync",
        env_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if mode not in _VECTOR_MODES:
            raise ValueError(f"mode must be one of {_VECTOR_MODES}, got {mode!r}.")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
        try:
            self._env = gymnasium.make_vec(
                env_id,
                num_envs=num_envs,
                vectorization_mode=mode,
                vector_kwargs={"autoreset_mode": gymnasium.vector.AutoresetMode.SAME_STEP},
                **(env_kwargs or {}),
            )
        except (gymnasium.error.UnregisteredEnv, gymnasium.error.DeprecatedEnv) as err:
            raise _unknown_env_error(env_id, err) from err
        try:
            self._spec = spec_from_spaces(
                self._env.single_observation_space, self._env.single_action_space
            )
        except UnsupportedSpaceError:
            self._env.close()
            raise
        self._env_action_dtype = self._env.single_action_space.dtype
        self.env_id = env_id
        self.num_envs = num_envs
        self._seed = seed
        self._seeded = False
        self._obs: np.ndarray | None = None
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._lengths = np.zeros(num_envs, dtype=np.int64)

    @property
    def spec(self) -> EnvSpec:
        """The validated spaces of one env."""
        return self._spec

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Resets every env and returns the first observations ``[N, *obs_shape]``.

        Without ``seed`` the first call uses the constructor's seed and later calls continue the
        envs' RNGs.  Episodes cut short by a reset are not reported as finished.
        """
        if seed is None and not self._seeded:
            seed = self._seed
        self._seeded = True
        obs, _ = self._env.reset(seed=seed)
        self._obs = np.array(obs, dtype=self._spec.obs_dtype)
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> StepOutput:
        """Steps every env with float agent actions ``[N, A]`` (see :func:`to_env_action`)."""
        if self._obs is None:
            raise RuntimeError("Call reset() before step().")
        actions = _check_actions(actions, self._spec)
        if actions.shape[0] != self.num_envs:
            raise ValueError(f"Expected actions for {self.num_envs} envs, got {actions.shape[0]}.")
        env_actions = to_env_action(actions, self._spec).astype(self._env_action_dtype)
        obs, reward, terminated, truncated, info = self._env.step(env_actions)

        obs = np.array(obs, dtype=self._spec.obs_dtype)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        done = terminated | truncated
        # SAME_STEP autoreset: `obs` already holds the reset obs of finished envs; the true
        # last observation of their episode is in info["final_obs"].
        next_obs = obs.copy()
        if done.any():
            final_mask = info.get("_final_obs", np.zeros(self.num_envs, dtype=bool))
            if not np.array_equal(np.asarray(final_mask, dtype=bool), done):
                raise RuntimeError(
                    "gymnasium did not report final_obs for every finished env; the vector env "
                    "is not in SAME_STEP autoreset mode."
                )
            for i in np.flatnonzero(done):
                next_obs[i] = np.asarray(info["final_obs"][i], dtype=self._spec.obs_dtype)

        reward = np.asarray(reward, dtype=np.float32)
        self._returns += reward
        self._lengths += 1
        finished = np.flatnonzero(done)
        episode_returns = [float(self._returns[i]) for i in finished]
        episode_lengths = [int(self._lengths[i]) for i in finished]
        self._returns[finished] = 0.0
        self._lengths[finished] = 0

        transition = EnvTransition(
            obs=self._obs,
            action=actions.astype(np.float32),
            reward=reward,
            next_obs=next_obs,
            terminated=terminated,
            truncated=truncated,
            valid=np.ones(self.num_envs, dtype=bool),
        )
        self._obs = obs
        return StepOutput(
            transition=transition,
            obs=obs.copy(),
            episode_returns=episode_returns,
            episode_lengths=episode_lengths,
        )

    def close(self) -> None:
        """Closes the envs (and their worker processes in async mode)."""
        self._env.close()

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
