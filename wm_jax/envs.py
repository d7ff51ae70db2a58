"""The environment API in one import (kept so ``from wm_jax.envs import ...`` keeps working).

Each concept lives in its own module; this one only re-exports them:

- :mod:`wm_jax.env_spec`: :class:`EnvSpec`, the space checks (:func:`spec_from_spaces`) and the
  agent's action convention (:func:`to_env_action`, :func:`from_env_action`).
- :mod:`wm_jax.env_make`: one env from an id (gymnasium, ``module:EnvId``, ``gymnax:``), the
  pixel-observation wrapper, :func:`make_env_spec`.
- :mod:`wm_jax.vector_env`: :class:`VectorEnv` (seeded resets, episode boundaries, exact resume)
  and what its steps return.
- :mod:`wm_jax.env_guard`: NaN / out-of-range observations and rewards.
- :mod:`wm_jax.gymnax_env`: gymnax envs behind the same interface.
"""

from __future__ import annotations

# Re-exports: the public names that code, tests and docs import from wm_jax.envs.
from wm_jax.env_guard import InvalidEnvDataError
from wm_jax.env_ids import GYMNAX_PREFIX
from wm_jax.env_make import PIXELS_KEY, ResizeObservationPIL, make_env, make_env_spec, pixel_size
from wm_jax.env_spec import (
    EnvSpec,
    UnsupportedSpaceError,
    from_env_action,
    spec_from_spaces,
    to_env_action,
)
from wm_jax.vector_env import (
    EnvStepError,
    EnvTransition,
    EvaluationStopped,
    StepOutput,
    VectorEnv,
    episode_seed,
)

__all__ = [
    "GYMNAX_PREFIX",
    "EnvSpec",
    "EnvStepError",
    "EnvTransition",
    "EvaluationStopped",
    "InvalidEnvDataError",
    "StepOutput",
    "PIXELS_KEY",
    "ResizeObservationPIL",
    "UnsupportedSpaceError",
    "VectorEnv",
    "episode_seed",
    "from_env_action",
    "make_env",
    "make_env_spec",
    "pixel_size",
    "spec_from_spaces",
    "to_env_action",
]
