"""wm_jax — a functional JAX/Flax framework for training world-model agents.

The public API (imported lazily, so ``import wm_jax`` stays cheap)::

    import wm_jax

    config = wm_jax.get_config()                      # every default, the seeds' values
    config.env_id = "Pendulum-v1"
    result = wm_jax.train(config, "runs/pendulum")    # the loop the CLI runs; resumes if it can
    policy = wm_jax.load_policy("runs/pendulum")      # newest checkpoint, acting parameters only
    action = policy.act(obs)                          # env action for one observation (or a batch)
    mean, std, _ = wm_jax.evaluate_policy(policy, episodes=10)
    wm_jax.export_policy(policy, "exported/pendulum") # self-contained, no pickle
    wm_jax.train_offline(config, "runs/offline", "run:runs/pendulum")  # no env steps

Lower level: ``make_agent`` / ``make_steps`` give the jitted pure update steps over a
``TrainState`` (see README "As a library").
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it
_API = {
    "get_config": "wm_jax.config",
    "validate_config": "wm_jax.config",
    "ConfigError": "wm_jax.config",
    "train": "wm_jax.loops",
    "Trainer": "wm_jax.trainer",
    "RunResult": "wm_jax.shell",
    "NonFiniteError": "wm_jax.shell",
    "Policy": "wm_jax.inference",
    "load_policy": "wm_jax.inference",
    "export_policy": "wm_jax.inference",
    "evaluate_policy": "wm_jax.evaluate",
    "record_episode": "wm_jax.evaluate",
    "make_agent": "wm_jax.update",
    "make_steps": "wm_jax.update",
    "TrainState": "wm_jax.types",
    "Transition": "wm_jax.types",
    "Sequence": "wm_jax.types",
    "EnvSpec": "wm_jax.env_spec",
    "VectorEnv": "wm_jax.vector_env",
    "make_env_spec": "wm_jax.env_make",
    "InvalidEnvDataError": "wm_jax.env_guard",
    "write_report": "wm_jax.report",
    "train_offline": "wm_jax.offline",
    "train_device": "wm_jax.device_loop",
    "UntrustedImportError": "wm_jax.safe_load",
}
_ALIASES = {"validate_config": "validate"}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'wm_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), _ALIASES.get(name, name))
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
