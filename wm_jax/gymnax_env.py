"""gymnax environments (``--config.env_id=gymnax:CartPole-v1``) behind the gymnasium vector-env
interface that :class:`wm_jax.vector_env.VectorEnv` drives, so they go through the same training
loop, env guard, replay and exact resume as gymnasium envs.

:class:`GymnaxVectorEnv` runs ``N`` copies of a gymnax env with one jitted, vmapped call per
reset and per step, on the default JAX device, for the host loop.  :class:`GymnaxTask` is its
twin for the on-device loop (:mod:`wm_jax.device_loop`), stepped inside the loop's compiled scan.
The two share the env and params (:func:`make_gymnax`), the spaces and the observation
conversion (:func:`board_to_uint8`), but not the stepping: the host adapter derives every key
from its episode's seed and lets ``VectorEnv`` do seeded resets (what exact resume by action
replay needs), while the task splits one key per vector step and keeps gymnax's own auto-reset
(its resume restores the whole device state instead).  gymnax is imported only when a
``gymnax:`` id is used (``pip install "wm_jax[gymnax]"``).

How gymnax is mapped onto wm_jax's semantics (gymnax 1.0.1, read from its source):

- **Seeded resets.** ``VectorEnv`` resets each finished env itself with
  ``reset(seed=[...], options={"reset_mask": done})`` and seed ``episode_seed(seed, i, e)``.
  Here env ``i``'s key ``PRNGKey(seed_i)`` is split once into gymnax's ``reset`` key and the
  start of a per-env step-key chain that advances by one split per step, so an episode is a pure
  function of its seed and actions: exactly what resuming by action replay needs.
- **No transition crosses an episode boundary.** gymnax's ``step`` auto-resets a finished env
  and returns the *reset* observation; its ``info["final_observation"]`` is the true last one,
  which is what this adapter returns.  The auto-reset state gymnax keeps is never stepped:
  ``VectorEnv`` replaces it with its seeded reset first (as with gymnasium's
  ``AutoresetMode.DISABLED``, stepping a finished env without a reset is undefined).
- **Termination vs truncation.** gymnax 1.0.1's ``step`` returns them separately:
  ``terminated`` is the env's natural end (``step_env``'s flag, i.e. ``is_terminated``);
  ``truncated`` is ``is_truncated(state) = state.time >= params.max_steps_in_episode``, the time
  limit.  wm_jax sets ``cont = 1 - terminated``, so a time limit keeps ``cont = 1``.  (Envs that
  report ``info["discount"]`` also set it to 0 only on natural termination.)
- **Spaces.** ``Box`` becomes a gymnasium ``Box`` (float32, uint8 kept), ``Discrete`` a
  gymnasium ``Discrete``.  2-D observations (Catch's 10×5 board, DeepSea) get a trailing channel
  axis, ``[H, W, 1]``: wm_jax's image layout, so ``model.encoder=auto`` picks the CNN for them
  as for MinAtar's ``[10, 10, C]`` (the MLP encoder only flattens the last axis).
- **Boards become uint8 images.** A board (rank >= 2) whose bounds lie in ``[0, 1]``, binary or
  ``[0, 1]``-float (Catch's float 0/1 cells, MinAtar's boolean channels, DeepSea), is returned as
  uint8 ``round(255 · x)``, i.e. ``{0, 255}`` for binary boards, with a ``Box(0, 255, uint8)``
  space.  It is then treated like any camera image: stored as uint8 in replay (4x less memory
  than float32), scaled to ``[-0.5, 0.5]`` on the device by the CNN encoder
  (:func:`wm_jax.networks.encoders.normalize_image`), and never given to the running observation
  normaliser, whose per-pixel statistics would blow rarely-lit cells up to ±clip.  Boards with
  other bounds (Pong-misc's 0..2) stay float32.  :func:`board_to_uint8` is the one conversion,
  shared with the device loop's :class:`GymnaxTask`.
- **env_kwargs.** Fields of the env's ``EnvParams`` (``max_episode_steps`` is an alias of
  ``max_steps_in_episode``) replace the default params; anything else goes to the env's
  constructor (e.g. ``rows`` of Catch).
- ``vector_mode`` is ignored: everything runs in this process on the JAX device.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import chex
import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces

from wm_jax.env_ids import GYMNAX_PREFIX
from wm_jax.env_spec import EnvSpec, UnsupportedSpaceError

__all__ = [
    "EnvOutput",
    "GymnaxNotInstalledError",
    "GymnaxTask",
    "GymnaxVectorEnv",
    "board_to_uint8",
    "gymnax_spaces",
    "make_gymnax",
]

_LIMIT_ALIAS = "max_episode_steps"  # the gymnasium name, also accepted for gymnax envs


class GymnaxNotInstalledError(ImportError, ValueError):
    """A ``gymnax:`` id was used without gymnax installed (a ValueError too, so the trainer
    reports it as a start-up config error)."""


def _import_gymnax():
    try:
        import gymnax
    except ModuleNotFoundError as err:
        if err.name != "gymnax":
            raise
        raise GymnaxNotInstalledError(
            'gymnax ids need the gymnax extra: pip install "wm_jax[gymnax]"'
        ) from err
    return gymnax


@functools.lru_cache(maxsize=32)
def _make_cached(name: str, ctor_items: tuple):
    """One env object per (id, constructor kwargs): gymnax envs are stateless, and reusing the
    object lets the jitted reset/step (static in the env) compile once per process rather than
    once per VectorEnv (the trainer builds a fresh one for every evaluation)."""
    return _import_gymnax().make(name, **dict(ctor_items))


def make_gymnax(env_id: str, env_kwargs: dict[str, Any] | None = None):
    """Builds the gymnax env and params of a ``gymnax:Name`` id.

    Returns:
        ``(env, params)``, the params with the ``EnvParams`` fields of ``env_kwargs`` applied.

    Raises:
        GymnaxNotInstalledError: If gymnax is not installed.
        ValueError: For an unknown name (listing ``gymnax.registered_envs``) or env_kwargs that
            are neither params fields nor constructor arguments.
    """
    gymnax = _import_gymnax()
    name = env_id[len(GYMNAX_PREFIX) :]
    if name not in gymnax.registered_envs:
        raise ValueError(
            f"Unknown gymnax environment {name!r} (env_id {env_id!r}). Registered gymnax ids: "
            f"{', '.join(gymnax.registered_envs)}; use e.g. 'gymnax:CartPole-v1'."
        )
    kwargs = dict(env_kwargs or {})
    if _LIMIT_ALIAS in kwargs:
        if "max_steps_in_episode" in kwargs:
            raise ValueError(
                f"env_kwargs sets both {_LIMIT_ALIAS} and max_steps_in_episode; keep one."
            )
        kwargs["max_steps_in_episode"] = kwargs.pop(_LIMIT_ALIAS)
    _, default_params = _make_cached(name, ())
    fields = [f.name for f in dataclasses.fields(default_params)]
    param_kwargs = {k: v for k, v in kwargs.items() if k in fields}
    ctor_items = tuple(sorted((k, v) for k, v in kwargs.items() if k not in fields))
    try:
        hash(ctor_items)
    except TypeError as err:
        raise ValueError(
            f"env_kwargs {dict(ctor_items)} for {name}'s constructor must be hashable (numbers, "
            f"strings, tuples): {err}"
        ) from err
    try:
        env, params = _make_cached(name, ctor_items)
    except TypeError as err:
        raise ValueError(
            f"env_kwargs {dict(ctor_items)} are neither fields of {name}'s EnvParams ({fields}) "
            f"nor arguments of its constructor: {err}"
        ) from err
    return env, params.replace(**param_kwargs)


def _box(low, high, shape: tuple[int, ...], dtype) -> spaces.Box:
    def full(bound):
        return np.broadcast_to(np.asarray(bound, np.float64), shape).astype(dtype)

    return spaces.Box(full(low), full(high), shape, dtype)


def _observation_space(env, params) -> spaces.Box:
    space = env.observation_space(params)
    if not isinstance(space, _import_gymnax().environments.spaces.Box):
        raise UnsupportedSpaceError(
            f"gymnax {env.name}'s observation space {space} is not a Box: wm_jax needs Box "
            "observations (float or uint8), so this gymnax env is not supported."
        )
    shape = tuple(int(d) for d in space.shape)
    dtype = np.uint8 if np.dtype(space.dtype) == np.uint8 else np.float32
    low = np.broadcast_to(np.asarray(space.low, np.float64), shape)
    high = np.broadcast_to(np.asarray(space.high, np.float64), shape)
    if len(shape) == 2:  # a single-channel board: wm_jax's images are [H, W, C]
        shape = (*shape, 1)
    if dtype != np.uint8 and len(shape) >= 2 and low.min() >= 0.0 and high.max() <= 1.0:
        return _box(255 * low.reshape(shape), 255 * high.reshape(shape), shape, np.uint8)
    return _box(low.reshape(shape), high.reshape(shape), shape, dtype)


def board_to_uint8(obs: jax.Array, obs_shape: tuple[int, ...], obs_dtype) -> jax.Array:
    """gymnax observations ``[N, ...]`` in the adapter's layout: reshaped to ``[N,
    *obs_shape]`` and, where the space became uint8 from a ``[0, 1]`` board (see the module
    docstring), ``round(255 · x)``; an observation that is already uint8 is only cast."""
    obs = obs.reshape((obs.shape[0], *obs_shape))
    if np.dtype(obs_dtype) == np.uint8 and obs.dtype != jnp.uint8:
        return jnp.round(jnp.clip(obs.astype(jnp.float32), 0.0, 1.0) * 255.0).astype(jnp.uint8)
    return obs.astype(obs_dtype)


def _action_space(env, params) -> spaces.Space:
    space = env.action_space(params)
    gx = _import_gymnax().environments.spaces
    if isinstance(space, gx.Discrete):
        return spaces.Discrete(int(space.n))
    if isinstance(space, gx.Box):
        shape = tuple(int(d) for d in space.shape)
        return _box(space.low, space.high, shape, np.float32)
    raise UnsupportedSpaceError(
        f"gymnax {env.name}'s action space {space} is not Discrete or Box, which wm_jax needs."
    )


def gymnax_spaces(
    env_id: str, env_kwargs: dict[str, Any] | None = None
) -> tuple[spaces.Box, spaces.Space, int]:
    """The gymnasium observation and action spaces of a ``gymnax:`` id, and its time limit
    (``params.max_steps_in_episode``); builds no vector env and compiles nothing."""
    env, params = make_gymnax(env_id, env_kwargs)
    limit = int(params.max_steps_in_episode)
    return _observation_space(env, params), _action_space(env, params), limit


def _where(mask: jax.Array, new, old):
    """Per-env select over a batched pytree (leading axis = env)."""
    return jax.tree.map(
        lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b), new, old
    )


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _reset_batch(env, obs_shape, obs_dtype, params, seeds, mask, carry):
    """Resets the envs in ``mask`` from their seeds; ``carry = (state, step_keys, obs)``, None on
    the first reset (every env is then reset)."""
    keys = jax.vmap(lambda s: jax.random.split(jax.random.PRNGKey(s)))(seeds)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(keys[:, 0], params)
    obs = board_to_uint8(obs, obs_shape, obs_dtype)
    fresh = (state, keys[:, 1], obs)
    return fresh if carry is None else _where(mask, fresh, carry)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _step_batch(env, obs_shape, obs_dtype, params, actions, carry):
    """One gymnax ``step`` per env; returns the new carry and (final obs, reward, terminated,
    truncated)."""
    state, step_keys, _ = carry
    keys = jax.vmap(jax.random.split)(step_keys)
    _, state, reward, terminated, truncated, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
        keys[:, 1], state, actions, params
    )
    obs = board_to_uint8(info["final_observation"], obs_shape, obs_dtype)
    out = (obs, reward.astype(jnp.float32), terminated.astype(bool), truncated.astype(bool))
    return (state, keys[:, 0], obs), out


class GymnaxVectorEnv(gymnasium.vector.VectorEnv):
    """``N`` copies of a gymnax env as a gymnasium vector env with autoreset disabled.

    ``reset`` needs explicit seeds (an int ``s`` means ``[s, s + 1, ...]``, as in gymnasium) and
    honours ``options["reset_mask"]``; ``step`` returns the true final observation of an episode
    that ends, and ``terminated`` / ``truncated`` as gymnax reports them (see the module
    docstring).  Observations, rewards and flags come back as numpy arrays.

    Raises:
        GymnaxNotInstalledError: If gymnax is missing.
        ValueError: Unknown id, bad env_kwargs or ``num_envs < 1``.
        UnsupportedSpaceError: A space wm_jax cannot use.
    """

    metadata = {"autoreset_mode": gymnasium.vector.AutoresetMode.DISABLED}

    def __init__(
        self, env_id: str, num_envs: int, env_kwargs: dict[str, Any] | None = None
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
        self._gymnax_env, self._params = make_gymnax(env_id, env_kwargs)
        self.single_observation_space = _observation_space(self._gymnax_env, self._params)
        self.single_action_space = _action_space(self._gymnax_env, self._params)
        self.observation_space = gymnasium.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gymnasium.vector.utils.batch_space(self.single_action_space, num_envs)
        self.num_envs = num_envs
        self.env_id = env_id
        self._static = (
            self._gymnax_env,
            tuple(self.single_observation_space.shape),
            np.dtype(self.single_observation_space.dtype),
        )
        self._discrete = isinstance(self.single_action_space, spaces.Discrete)
        self._carry = None

    def _seeds(self, seed) -> np.ndarray:
        if seed is None:
            raise ValueError(
                "GymnaxVectorEnv.reset needs explicit seeds (wm_jax.envs.VectorEnv passes one "
                "per episode), so that every episode can be replayed."
            )
        seeds = (
            np.arange(self.num_envs, dtype=np.int64) + int(seed)
            if np.ndim(seed) == 0
            else np.asarray(seed, dtype=np.int64)
        )
        if seeds.shape != (self.num_envs,) or np.any(seeds < 0) or np.any(seeds >= 2**32):
            raise ValueError(
                f"Expected {self.num_envs} seeds in [0, 2**32), got {np.asarray(seed).tolist()}."
            )
        return seeds.astype(np.uint32)

    def reset(self, *, seed=None, options: dict[str, Any] | None = None):
        mask = np.asarray((options or {}).get("reset_mask", np.ones(self.num_envs, bool)), bool)
        if mask.shape != (self.num_envs,):
            raise ValueError(f"reset_mask must have shape ({self.num_envs},), got {mask.shape}.")
        if self._carry is None and not mask.all():
            raise RuntimeError("The first reset must reset every env (no env has a state yet).")
        self._carry = _reset_batch(
            *self._static, self._params, self._seeds(seed), jnp.asarray(mask), self._carry
        )
        return np.array(self._carry[2]), {}

    def step(self, actions):
        if self._carry is None:
            raise RuntimeError("Call reset() before step().")
        actions = np.asarray(actions)
        actions = actions.astype(np.int32) if self._discrete else actions.astype(np.float32)
        if actions.shape[0] != self.num_envs:
            raise ValueError(f"Expected actions for {self.num_envs} envs, got {actions.shape}.")
        self._carry, out = _step_batch(*self._static, self._params, actions, self._carry)
        obs, reward, terminated, truncated = (np.array(x) for x in jax.device_get(out))
        return obs, reward, terminated, truncated, {}

    def close_extras(self, **kwargs: Any) -> None:
        self._carry = None


# --------------------------------------------------------------------------------------------
# The device loop's twin: gymnax envs stepped inside jitted code
# --------------------------------------------------------------------------------------------


class EnvOutput(NamedTuple):
    obs: chex.Array  # [N, ...] the next observation (a reset one where an episode ended)
    env_state: Any
    reward: chex.Array  # [N]
    terminated: chex.Array  # [N] bool
    truncated: chex.Array  # [N] bool: the time limit, which keeps cont = 1
    final_obs: chex.Array  # [N, ...] the observation the step landed in, before any reset


@dataclasses.dataclass(frozen=True)
class GymnaxTask:
    """A gymnax environment with its params and wm_jax's :class:`~wm_jax.env_spec.EnvSpec`,
    stepped inside jitted code by the device loop (the host loop's twin: :class:`GymnaxVectorEnv`).
    """

    env: Any
    params: Any
    spec: EnvSpec

    @property
    def max_episode_steps(self) -> int:
        return int(self.params.max_steps_in_episode)

    def env_actions(self, actions: chex.Array) -> chex.Array:
        """The agent's float actions ``[N, A]`` as gymnax actions (jnp twin of
        :func:`wm_jax.env_spec.to_env_action`)."""
        spec = self.spec
        if spec.discrete:
            return jnp.argmax(actions, -1).astype(jnp.int32) + spec.action_start
        low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
        unit = jnp.clip(actions, -1.0, 1.0)
        return jnp.clip(low + (unit + 1.0) * 0.5 * (high - low), low, high)

    def step(self, key: chex.PRNGKey, env_state, actions: chex.Array) -> EnvOutput:
        """Steps ``N`` envs (auto-resetting the finished ones) with agent actions ``[N, A]``."""
        keys = jax.random.split(key, actions.shape[0])
        obs, env_state, reward, terminated, truncated, info = jax.vmap(
            self.env.step, in_axes=(0, 0, 0, None)
        )(keys, env_state, self.env_actions(actions), self.params)
        return EnvOutput(
            obs=self.observation(obs),
            env_state=env_state,
            reward=reward.astype(jnp.float32),
            terminated=terminated.astype(bool),
            truncated=truncated.astype(bool) & ~terminated.astype(bool),
            final_obs=self.observation(info["final_observation"]),
        )

    def observation(self, obs: chex.Array) -> chex.Array:
        """gymnax observations ``[N, ...]`` in the spec's shape and dtype (2-D boards get
        their channel axis, ``[0, 1]`` boards become uint8 ``{0, 255}``: the host adapter's
        :func:`board_to_uint8`)."""
        return board_to_uint8(obs, self.spec.obs_shape, self.spec.obs_dtype)

    def reset(self, key: chex.PRNGKey, num_envs: int):
        obs, env_state = jax.vmap(self.env.reset, in_axes=(0, None))(
            jax.random.split(key, num_envs), self.params
        )
        return self.observation(obs), env_state
