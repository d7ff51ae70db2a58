"""JAX's persistent compilation cache, on by default for the command lines.

A run compiles a dozen XLA programs (the train step once per phase of the schedule, acting for
the training and the evaluation batch, the open-loop check, ...); on a 2-core CPU that is tens of
seconds, a large share of a short run.  With the cache a rerun, a resume or the next run of the
same config loads them from disk instead.  ``$JAX_COMPILATION_CACHE_DIR`` (or an earlier
``jax.config`` setting) wins; ``WM_JAX_COMPILATION_CACHE=0`` turns it off.
"""

from __future__ import annotations

import os

DEFAULT_DIR = os.path.join("~", ".cache", "wm_jax", "xla")


def enable_compilation_cache(directory: str | None = None) -> str | None:
    """Points JAX's persistent cache at ``directory`` (default ``~/.cache/wm_jax/xla``) unless
    one is configured already or it is switched off; returns the directory in use (or None)."""
    import jax

    if os.environ.get("WM_JAX_COMPILATION_CACHE", "1") == "0":
        return None
    current = jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if current:
        return current
    path = os.path.expanduser(directory or DEFAULT_DIR)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:  # a read-only home: run without the cache
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    # Small programs compile in milliseconds: caching them costs more than it saves.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path
