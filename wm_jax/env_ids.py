"""The id prefix of JAX-native (gymnax) envs, ``"gymnax:"``: the one env-id name that
:mod:`wm_jax.env_make`, :mod:`wm_jax.gymnax_env` and :mod:`wm_jax.safe_load` all need, kept apart
so that none of them imports another for it."""

from __future__ import annotations

GYMNAX_PREFIX = "gymnax:"  # env ids run by wm_jax.gymnax_env rather than gymnasium
