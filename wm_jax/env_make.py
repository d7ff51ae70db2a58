"""Making one environment from an env id: gymnasium ids, ``module:EnvId`` ids, ``gymnax:`` ids
and the pixel-observation wrapper; :func:`make_env_spec` validates an id's spaces before training
starts.  The vector env that steps a batch of them is :mod:`wm_jax.vector_env`.

Env ids
-------
A registered gymnasium id (``"CartPole-v1"``); ``"module:EnvId"`` to import the module that
registers your own env first (gymnasium's own syntax); or ``"gymnax:Name"`` for a gymnax env
(``"gymnax:Catch-bsuite"``), run through :class:`wm_jax.gymnax_env.GymnaxVectorEnv` under the same
seeding, boundary and resume rules.  The ``gymnax:`` prefix is checked first, because gymnasium
would otherwise read it as "import the gymnax module, then make its own CartPole-v1".

Pixels from any rendered env
----------------------------
``env_kwargs["pixels"] = N`` (``--env_kwargs='{"pixels": 64}'``; ``true`` means 64) replaces a
gymnasium env's observation by its ``rgb_array`` render, resized to ``N × N × 3`` uint8
(:func:`make_env`: ``gymnasium.wrappers.AddRenderObservation(render_only=True)`` then
:class:`ResizeObservationPIL`, an area-averaging resize with Pillow, which matplotlib already
needs; gymnasium's own ``ResizeObservation`` needs OpenCV).  The key is wm_jax's, never passed to
``gymnasium.make``, and lives in ``env_kwargs`` so every place that rebuilds the env from a run's
config (training, evaluation, ``load_policy``, GIFs) sees pixels too.  An env without an
``rgb_array`` renderer fails at start-up saying so.  The images then take the uint8 path: CNN
encoder/decoder (``model.encoder=auto``), uint8 replay, no running observation normalisation.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from typing import Any

import gymnasium
import numpy as np
from absl import logging
from gymnasium import spaces

from wm_jax.env_ids import GYMNAX_PREFIX
from wm_jax.env_spec import MAX_JOINT_ACTIONS, EnvSpec, UnsupportedSpaceError, spec_from_spaces

__all__ = [
    "PIXELS_KEY",
    "ResizeObservationPIL",
    "check_no_pixels",
    "make_env",
    "make_env_spec",
    "observations_as_box",
    "pixel_size",
    "UNKNOWN_ENV_ERRORS",
    "actions_as_discrete",
    "agent_actions",
    "BoxAction",
    "async_context",
    "env_kwargs_error",
    "unknown_env_error",
]


# MuJoCo renders through GLFW by default, which needs a display: on a headless Linux machine
# (a cluster node, CI, a container) pixels and evaluation videos of its envs would fail, so
# they render off-screen with EGL there unless the user chose a backend. Set before any env
# imports mujoco.
if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")

# What gymnasium raises for an id it cannot make (its own errors: unregistered, deprecated,
# malformed ("cart pole"), a registered env whose package is missing, e.g. Box2D for
# LunarLander; ModuleNotFoundError: the module of a "module:EnvId" id); turned into
# :func:`unknown_env_error` wherever an env is made.
UNKNOWN_ENV_ERRORS = (gymnasium.error.Error, ModuleNotFoundError)


def unknown_env_error(env_id: str, err: Exception) -> ValueError:
    """The error for an id gymnasium cannot make: the package it needs, or which ids it can."""
    if isinstance(err, gymnasium.error.DependencyNotInstalled):
        return ValueError(f"{env_id} needs a package that is not installed: {err}")
    if isinstance(err, ModuleNotFoundError) and (entry := _registered_entry_point(env_id)):
        # A registered env whose module imports a missing package (Hopper-v5 without imageio).
        hint = f'pip install "{err.name}"' if err.name else "install it"
        family = entry.split(":")[0].split(".")
        if family[:2] == ["gymnasium", "envs"] and len(family) > 2:
            hint = f'pip install "gymnasium[{family[2]}]"'
        return ValueError(
            f"{env_id} is registered but needs a package that is not installed ({err}): {hint}"
        )
    return ValueError(
        f"Unknown or unavailable environment id {env_id!r}: {str(err).rstrip('.')}. Use a "
        "registered id (e.g. 'CartPole-v1'; gymnasium.pprint_registry() lists them), or "
        "'module:EnvId' to import the module that registers your own env first."
    )


def _registered_entry_point(env_id: str) -> str | None:
    """The registered entry point of ``env_id`` as text, or None for an id gymnasium does not
    know and for a ``module:EnvId`` id."""
    if ":" in env_id:  # its module is missing, or registers it; the generic message says so
        return None
    spec = gymnasium.registry.get(env_id)
    if spec is None:
        return None
    entry = spec.entry_point
    return entry if isinstance(entry, str) else f"{entry.__module__}:{entry.__qualname__}"


def async_context(env_id: str, mode: str) -> str | None:
    """The multiprocessing start method of ``env_id``'s async workers: ``"spawn"`` for a
    gymnasium env that computes with JAX (``phys2d/``, ``tabular/``: a ``FunctionalJaxEnv``),
    whose worker forked from this process, where JAX's threads already run, deadlocks (the run
    hung); None (the platform's default, fork on Linux) for every other env: a spawned worker
    re-imports the launcher (~2 s) and needs a picklable env."""
    if mode != "async" or env_id.startswith(GYMNAX_PREFIX):
        return None
    try:
        creator = gymnasium.spec(env_id).entry_point
        if isinstance(creator, str):
            creator = gymnasium.envs.registration.load_env_creator(creator)
    except Exception:  # unknown or unloadable ids are reported where the env is made
        return None
    from gymnasium.envs.functional_jax_env import FunctionalJaxEnv

    if isinstance(creator, type) and issubclass(creator, FunctionalJaxEnv):
        return "spawn"
    return None


def env_kwargs_error(env_id: str, kwargs: dict[str, Any], err: TypeError) -> ValueError:
    """The error for an env whose constructor refused ``kwargs`` (an unknown keyword, a wrong
    type): ``config.env_kwargs`` / ``--env_kwargs`` is where they came from."""
    return ValueError(
        f"{env_id} could not be made with env_kwargs {kwargs} ({err}); fix or drop them "
        "(--env_kwargs, config.env_kwargs)"
    )


PIXELS_KEY = "pixels"  # env_kwargs key of wm_jax's pixel wrapper (see the module docstring)
_DEFAULT_PIXELS = 64


def pixel_size(env_kwargs: dict[str, Any] | None) -> tuple[int | None, dict[str, Any]]:
    """Splits ``env_kwargs`` into the pixel option and the env's own kwargs.

    Returns:
        ``(size, kwargs)``: the square image side (``None``: the env's own observations; ``True``
        means 64) and ``env_kwargs`` without the ``"pixels"`` key.

    Raises:
        ValueError: If the value is not a bool or an integer in [8, 1024].
    """
    kwargs = dict(env_kwargs or {})
    value = kwargs.pop(PIXELS_KEY, None)
    if value is None or value is False or (type(value) is int and value == 0):
        return None, kwargs
    if value is True:
        return _DEFAULT_PIXELS, kwargs
    if type(value) is not int or not 8 <= value <= 1024:
        raise ValueError(
            f"env_kwargs[{PIXELS_KEY!r}] must be true (64×64) or an image side in [8, 1024] "
            f"(0/false: the env's own observations), got {value!r}"
        )
    return value, kwargs


class ResizeObservationPIL(gymnasium.ObservationWrapper):
    """Resizes ``[H, W, C]`` uint8 image observations to ``[size, size, C]`` with Pillow's box
    (area-average) filter, so thin features (CartPole's pole) fade to grey instead of vanishing
    the way nearest-neighbour sampling can make them."""

    def __init__(self, env: gymnasium.Env, size: int) -> None:
        super().__init__(env)
        space = env.observation_space
        image = isinstance(space, spaces.Box) and space.dtype == np.uint8
        if not (image and len(space.shape) == 3):
            raise UnsupportedSpaceError(
                f"ResizeObservationPIL needs uint8 [H, W, C] images, got {space}"
            )
        self.size = int(size)
        shape = (self.size, self.size, space.shape[-1])
        self.observation_space = spaces.Box(0, 255, shape, np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        from PIL import Image  # Pillow comes with matplotlib

        frame = np.asarray(observation, np.uint8)
        if frame.shape[:2] == (self.size, self.size):
            return frame
        if frame.shape[-1] == 1:  # PIL's single-channel mode "L" has no channel axis
            image = Image.fromarray(frame[..., 0]).resize((self.size,) * 2, Image.Resampling.BOX)
            return np.asarray(image, np.uint8)[..., None]
        image = Image.fromarray(frame).resize((self.size,) * 2, Image.Resampling.BOX)
        return np.asarray(image, np.uint8)


# Observation spaces gymnasium's FlattenObservation turns into a Box (a Discrete one-hot).
_FLATTENED = (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary, spaces.Tuple, spaces.Dict)


def observations_as_box(env: gymnasium.Env) -> gymnasium.Env:
    """``env`` with observations wm_jax reads, so any gymnasium env id just works: a float or
    uint8 ``Box`` is left as it is; a ``Discrete`` (FrozenLake, Taxi), ``MultiDiscrete``,
    ``MultiBinary``, ``Tuple`` (Blackjack) or ``Dict`` observation is flattened by
    ``gymnasium.wrappers.FlattenObservation`` (a ``Discrete`` becomes its one-hot) and, like an
    integer ``Box``, cast to float32.  A space that does not flatten (``Text``, ``Graph``, a
    ``Tuple`` holding one) is left for :func:`wm_jax.env_spec.spec_from_spaces` to refuse by
    name.  Training, evaluation and :func:`make_env` all apply it: a loaded policy's ``act``
    takes the observations of ``make_env(env_id)``."""
    space = env.observation_space
    flattened = isinstance(space, _FLATTENED)
    if flattened:
        try:
            env = gymnasium.wrappers.FlattenObservation(env)
        except (NotImplementedError, TypeError, ValueError):
            return env
        space = env.observation_space
    if not isinstance(space, spaces.Box):
        return env
    dtype = np.dtype(space.dtype)
    if np.issubdtype(dtype, np.floating) or (dtype == np.uint8 and not flattened):
        return env  # uint8 stays uint8 where it is the env's own (images)
    return gymnasium.wrappers.DtypeObservation(env, np.float32)


class JointDiscreteAction(gymnasium.ActionWrapper):
    """A ``MultiDiscrete``, ``MultiBinary`` or integer ``Box`` action space as one
    ``Discrete(n)`` over its joint actions: action ``k`` is the ``k``-th combination in row-major
    order (the last element varies fastest), so a one-element space keeps its own order."""

    def __init__(self, env: gymnasium.Env, low: np.ndarray, high: np.ndarray) -> None:
        super().__init__(env)
        space = env.action_space
        self._low = np.asarray(low, np.int64)
        self._sizes = tuple(int(x) for x in (np.asarray(high, np.int64) - self._low + 1).ravel())
        self._shape, self._dtype = space.shape, space.dtype
        self.action_space = spaces.Discrete(int(np.prod(self._sizes)))

    def action(self, action) -> np.ndarray:
        digits = np.unravel_index(int(action), self._sizes)
        return (self._low.ravel() + np.asarray(digits)).reshape(self._shape).astype(self._dtype)


def actions_as_discrete(env: gymnasium.Env) -> gymnasium.Env:
    """``env`` with an action space wm_jax's policy speaks, so any gymnasium env id just works:
    a ``MultiDiscrete``, ``MultiBinary`` or integer ``Box`` (gymnasium's ``tabular/`` envs) of at
    most :data:`wm_jax.env_spec.MAX_JOINT_ACTIONS` joint actions becomes one ``Discrete`` over them
    (:class:`JointDiscreteAction`); anything else is left for
    :func:`wm_jax.env_spec.spec_from_spaces` to accept (``Discrete``, a float ``Box``) or refuse
    by name.  Training, evaluation and :func:`make_env` all apply it: a loaded policy's ``act``
    returns the actions of ``make_env(env_id)``."""
    space = env.action_space
    if isinstance(space, spaces.MultiBinary):
        low, high = np.zeros(space.shape, np.int64), np.ones(space.shape, np.int64)
    elif isinstance(space, spaces.MultiDiscrete):
        low = np.asarray(space.start, np.int64)
        high = low + np.asarray(space.nvec, np.int64) - 1
    elif isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.integer):
        if not (space.is_bounded("both") and np.all(space.low <= space.high)):
            return env
        low, high = np.asarray(space.low, np.int64), np.asarray(space.high, np.int64)
    else:
        return env
    if low.size == 0 or np.prod((high - low + 1).astype(np.float64)) > MAX_JOINT_ACTIONS:
        return env
    return JointDiscreteAction(env, low, high)


class BoxAction(gymnasium.ActionWrapper):
    """A float ``Box`` action space the policy can fill: flat (1-D) and finite.  Each unbounded
    side gets a bound 2 away from the other side (both unbounded: ``[-1, 1]``, the policy's own
    range, so its actions pass unscaled), since the agent's ``[-1, 1]`` actions are rescaled into
    the box.  The env receives each action in its own shape and inside its own space."""

    def __init__(self, env: gymnasium.Env) -> None:
        super().__init__(env)
        space = env.action_space
        self._shape = space.shape
        low = np.asarray(space.low, np.float64).ravel()
        high = np.asarray(space.high, np.float64).ravel()
        low = np.where(np.isfinite(low), low, np.where(np.isfinite(high), high - 2.0, -1.0))
        high = np.where(np.isfinite(high), high, low + 2.0)
        self.action_space = spaces.Box(low.astype(space.dtype), high.astype(space.dtype))

    def action(self, action) -> np.ndarray:
        return np.asarray(action, self.action_space.dtype).reshape(self._shape)


def agent_actions(env: gymnasium.Env) -> gymnasium.Env:
    """``env`` with an action space wm_jax's policy speaks, so any gymnasium env id just works:
    :func:`actions_as_discrete` for discrete multi-part spaces, then :class:`BoxAction` for a
    float ``Box`` that is not 1-D or has unbounded sides (a warning names the bounds used: an env
    that wants larger actions there needs a box of its own).  Training, evaluation and
    :func:`make_env` all apply it."""
    env = actions_as_discrete(env)
    space = env.action_space
    if not (isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.floating)):
        return env
    bounded = space.is_bounded("both")
    if len(space.shape) == 1 and bounded:
        return env
    if np.any(np.asarray(space.low) >= np.asarray(space.high)):
        return env  # left for spec_from_spaces to refuse by name
    env = BoxAction(env)
    if not bounded:
        _warn_unbounded(str(space), str(env.action_space))
    return env


@functools.cache
def _warn_unbounded(space: str, used: str) -> None:
    # Once per space: the vector env makes num_envs copies of it.
    logging.warning(
        "the env's action space %s is unbounded; the agent acts within %s (its [-1, 1] "
        "actions rescaled into it); if the env needs larger actions, give it a bounded action "
        "space (e.g. gymnasium.wrappers.RescaleAction in a registered env of your own)",
        space,
        used,
    )


def make_env(
    env_id: str, env_kwargs: dict[str, Any] | None = None, render_mode: str | None = None
) -> gymnasium.Env:
    """One gymnasium env of ``env_id`` with ``env_kwargs``, observing pixels when
    ``env_kwargs["pixels"]`` asks for them (see the module docstring), else its own
    observations as a Box (:func:`observations_as_box`).

    Raises:
        ValueError: For an unknown id, a bad ``pixels`` value, or a pixel env that has no
            ``rgb_array`` renderer (or whose renderer needs a missing package such as pygame).
    """
    size, kwargs = pixel_size(env_kwargs)
    if size is not None and render_mode not in (None, "rgb_array"):
        raise ValueError(f"pixel observations need render_mode='rgb_array', not {render_mode!r}")
    mode = "rgb_array" if size is not None else render_mode
    try:
        env = gymnasium.make(env_id, **kwargs, **({"render_mode": mode} if mode else {}))
    except UNKNOWN_ENV_ERRORS as err:
        raise unknown_env_error(env_id, err) from err
    except TypeError as err:  # gymnasium's wrap of the env constructor's TypeError
        raise env_kwargs_error(env_id, kwargs, err) from err
    env = agent_actions(env)
    if size is None:
        return observations_as_box(env)
    modes = env.metadata.get("render_modes") or []
    if "rgb_array" not in modes or env.render_mode != "rgb_array":
        env.close()
        raise ValueError(
            f"{env_id} has no rgb_array renderer (its render_modes are {list(modes)}), so "
            f"env_kwargs[{PIXELS_KEY!r}] cannot observe it from pixels; drop the option or "
            "use an env that renders to rgb_array."
        )
    try:
        env = gymnasium.wrappers.AddRenderObservation(env, render_only=True)
    except gymnasium.error.DependencyNotInstalled as err:
        env.close()
        raise ValueError(
            f"{env_id}'s rgb_array renderer needs a package that is missing ({err}); for "
            'classic-control envs: pip install "wm_jax[render]"'
        ) from err
    except AssertionError as err:  # AddRenderObservation asserts that render() gave an array
        env.close()
        raise ValueError(f"{env_id}'s render() did not return an rgb_array image") from err
    except Exception as err:  # the renderer's own failure (MuJoCo without an OpenGL context)
        env.close()
        raise ValueError(
            f"{env_id}'s rgb_array renderer failed ({type(err).__name__}: {err}); for MuJoCo "
            "envs on a machine without a display set MUJOCO_GL=egl (or osmesa)"
        ) from err
    return ResizeObservationPIL(env, size)


def make_env_spec(env_id: str, env_kwargs: dict[str, Any] | None = None) -> EnvSpec:
    """Makes one env, reads its spaces, closes it: validates an env id before training starts.

    Raises:
        ValueError: If ``env_id`` is not registered (or gymnax is missing for a ``gymnax:`` id).
        UnsupportedSpaceError: If its spaces are not supported.
    """
    if env_id.startswith(GYMNAX_PREFIX):
        from wm_jax.gymnax_env import gymnax_spaces  # jax-only; gymnax imported lazily

        check_no_pixels(env_id, env_kwargs)
        observation_space, action_space, limit = gymnax_spaces(env_id, env_kwargs)
        spec = spec_from_spaces(observation_space, action_space)
        return dataclasses.replace(spec, max_episode_steps=limit)
    env = make_env(env_id, env_kwargs)
    try:
        spec = spec_from_spaces(env.observation_space, env.action_space)
        limit = env.spec.max_episode_steps if env.spec is not None else None
        return dataclasses.replace(spec, max_episode_steps=limit)
    finally:
        env.close()


def check_no_pixels(env_id: str, env_kwargs: dict[str, Any] | None) -> None:
    """Refuses the pixel option for a ``gymnax:`` id (gymnax envs have no renderer)."""
    if pixel_size(env_kwargs)[0] is not None:
        raise ValueError(
            f"env_kwargs[{PIXELS_KEY!r}] renders gymnasium envs; gymnax envs have no renderer "
            f"({env_id}'s boards are already images where it has them): drop the option"
        )
