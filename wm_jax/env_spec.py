"""What the agent knows about an environment's spaces, and its action convention.

The agent always speaks float action vectors: one-hot for a ``Discrete`` action space,
``[-1, 1]`` for a 1-D ``Box``.  :func:`spec_from_spaces` validates gymnasium spaces once at
start-up and summarises them as an :class:`EnvSpec`; :func:`to_env_action` and
:func:`from_env_action` convert the agent's actions to the environment's and back.  Both the
gymnasium vector env (:mod:`wm_jax.vector_env`) and the gymnax adapters (:mod:`wm_jax.gymnax_env`)
build on this module, which imports neither.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from gymnasium import spaces

__all__ = [
    "EnvSpec",
    "UnsupportedSpaceError",
    "check_actions",
    "from_env_action",
    "spec_from_spaces",
    "to_env_action",
]


# The most joint actions a MultiDiscrete, MultiBinary or integer Box action space may have to be
# made one Discrete (wm_jax.env_make.actions_as_discrete): the policy has a logit per action.
MAX_JOINT_ACTIONS = 1024


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
        max_episode_steps: The env's time limit, if it has one (not part of equality).
    """

    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    action_dim: int
    discrete: bool
    action_low: np.ndarray | None = None
    action_high: np.ndarray | None = None
    action_start: int = 0
    max_episode_steps: int | None = None

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
                f"{action_space.shape}; wrap the env with an action wrapper that flattens it "
                "(envs made by id are: wm_jax.env_make.agent_actions)."
            )
        if not np.issubdtype(action_space.dtype, np.floating):
            raise UnsupportedSpaceError(
                f"Unsupported action space {action_space}: a Box action must have a float dtype "
                f"(an integer Box of at most {MAX_JOINT_ACTIONS} joint actions with finite bounds "
                "is made one Discrete)."
            )
        low = np.asarray(action_space.low, dtype=np.float64)
        high = np.asarray(action_space.high, dtype=np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low < high)):
            raise UnsupportedSpaceError(
                f"Unsupported action space {action_space}: a Box action needs finite bounds with "
                "low < high, because the agent's [-1, 1] actions are rescaled to them; wrap the "
                "env with gymnasium.wrappers.RescaleAction / ClipAction, or discretise it with "
                "gymnasium.wrappers.DiscretizeAction (envs made by id get bounds: "
                "wm_jax.env_make.agent_actions)."
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
        f"Unsupported action space {action_space}: wm_jax supports Discrete, a 1-D float Box "
        "with finite bounds, or a MultiDiscrete, MultiBinary or integer Box of at most "
        f"{MAX_JOINT_ACTIONS} joint actions (made one Discrete); wrap the env to get one of "
        "those (e.g. gymnasium.wrappers.DiscretizeAction, or an action wrapper of your own)."
    )


def check_actions(actions: np.ndarray, spec: EnvSpec) -> np.ndarray:
    """``actions`` as an array, checked to be agent actions ``[N, A]`` for ``spec``."""
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
    actions = check_actions(actions, spec)
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
    env_actions = check_actions(env_actions, spec).astype(np.float64)
    unit = 2.0 * (env_actions - spec.action_low) / (spec.action_high - spec.action_low) - 1.0
    return np.clip(unit, -1.0, 1.0).astype(np.float32)
