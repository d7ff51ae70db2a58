"""Names shared by the gymnasium and gymnax environment modules (kept apart from both so that
neither imports the other at module level): the id prefix of JAX-native envs and the error for
spaces wm_jax cannot use."""

from __future__ import annotations

GYMNAX_PREFIX = "gymnax:"  # env ids run by wm_jax.gymnax_env rather than gymnasium


class UnsupportedSpaceError(ValueError):
    """An environment's observation or action space cannot be used by wm_jax."""
