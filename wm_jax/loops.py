"""The one place ``config.loop`` is dispatched: the host loop (:mod:`wm_jax.trainer`) or the
on-device loop (:mod:`wm_jax.device_loop`).  ``wm_jax.train`` and ``python -m wm_jax.train``
both come here."""

from __future__ import annotations

from wm_jax.config import ConfigError
from wm_jax.trainer import RunResult, Trainer


def train(config, workdir: str, stop_at: int | None = None) -> RunResult:
    """Trains ``config`` in ``workdir`` (resuming from its newest checkpoint) and returns the
    :class:`wm_jax.trainer.RunResult`; with ``config.loop = "device"`` through
    :func:`wm_jax.device_loop.train_device` (one seed: for several, call that directly)."""
    if config.get("loop", "host") == "device":
        if config.num_seeds > 1:
            raise ConfigError(
                "config.num_seeds: several seeds give several results; call "
                "wm_jax.train_device(config, workdir), which returns one per seed"
            )
        from wm_jax.device_loop import train_device

        return train_device(config, workdir, stop_at)[0]
    trainer = Trainer(config, workdir)
    try:
        return trainer.run(stop_at)
    finally:
        trainer.close()


def train_all(config, workdir: str) -> list[RunResult]:
    """Every seed's result: one for the host loop, ``config.num_seeds`` for the device loop."""
    if config.get("loop", "host") == "device":
        from wm_jax.device_loop import train_device

        return train_device(config, workdir)
    return [train(config, workdir)]
