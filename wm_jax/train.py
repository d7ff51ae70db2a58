"""The command-line launcher::

    python -m wm_jax.train                                   # CartPole-v1, default config
    python -m wm_jax.train --config=experiments/configs/pendulum.py --workdir=runs/pendulum
    python -m wm_jax.train --config.actor.lr=1e-4 --config.total_env_steps=50000 --seed=3
    python -m wm_jax.train --config.imports=my_models --config.model.dynamics=my_dynamics

``--config`` takes any Python file with a ``get_config()`` returning an ``ml_collections``
ConfigDict (default: :mod:`wm_jax.config`); ``--config.x=y`` overrides any field.  A run resumes
automatically from the newest checkpoint in ``--workdir``.  ``--config.imports`` names modules
that register your own components (docs/custom_dynamics.md).

Several processes (one per host or GPU) train one run together when every process is started
with ``--coordinator_address=host:port --num_processes=P --process_id=i`` (or ``--distributed``
where ``jax.distributed.initialize()`` finds them itself: TPU pod slices, SLURM, Open MPI) and
the same ``--workdir`` on a shared filesystem (README, "Multi-host")::

    for i in 0 1; do python -m wm_jax.train --coordinator_address=localhost:1234 \
        --num_processes=2 --process_id=$i --workdir=runs/mh & done; wait
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from wm_jax import config as config_module

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    default=config_module.__file__,
    help_string="Python config file with get_config(); override fields with --config.x=y.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Run directory (metrics, TensorBoard, checkpoints). Default: runs/<env>-<time>.",
)
_SEED = flags.DEFINE_integer("seed", None, "Overrides config.seed.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0 in a multi-process run (jax.distributed.initialize); every process "
    "gets the same value.",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes in a multi-process run."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index (0 .. num_processes-1) in a multi-process run."
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Join a multi-process run with jax.distributed.initialize(), which reads the coordinator, "
    "process count and index from the cluster (TPU pod slices, SLURM, Open MPI). Implied by "
    "--coordinator_address, --num_processes or --process_id.",
)
_ENV_KWARGS = flags.DEFINE_string(
    "env_kwargs",
    None,
    "JSON object merged into config.env_kwargs, e.g. '{\"max_episode_steps\": 1000}' "
    "(--config.env_kwargs.X can only change keys the config file already sets).",
)


def _env_kwargs(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise app.UsageError(f"--env_kwargs is not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise app.UsageError(f"--env_kwargs must be a JSON object, got {text!r}")
    return value


def _join_processes() -> None:
    """``jax.distributed.initialize`` when a multi-process flag is given; before any device
    is touched (nothing else in this module has touched one yet)."""
    given = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if not _DISTRIBUTED.value and given == (None, None, None):
        return
    from wm_jax.sharding import initialize_distributed

    initialize_distributed(*given)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _join_processes()
    import jax

    from wm_jax.config import ConfigError
    from wm_jax.envs import InvalidEnvDataError
    from wm_jax.trainer import NonFiniteError, train

    config = _CONFIG.value
    with config.unlocked():
        if _SEED.value is not None:
            config.seed = _SEED.value
        if _ENV_KWARGS.value:
            config.env_kwargs.update(_env_kwargs(_ENV_KWARGS.value))
    lead = jax.process_index() == 0  # process 0 prints the summary
    if jax.process_count() > 1 and not _WORKDIR.value:
        raise app.UsageError(
            "--workdir is required with several processes: every process must name the same "
            "directory (on a filesystem all of them see)"
        )
    workdir = _WORKDIR.value or os.path.join(
        "runs", f"{config.env_id.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    logging.set_verbosity(logging.INFO if lead else logging.WARNING)  # one process reports
    try:
        if config.loop == "device":
            from wm_jax.device_loop import train_device

            results = train_device(config, workdir)
        else:
            results = [train(config, workdir)]
    except ConfigError as err:
        raise app.UsageError(str(err)) from None
    except NonFiniteError as err:
        logging.error("%s", err)
        print(f"stopped: {err}", file=sys.stderr)
        sys.exit(3)
    except InvalidEnvDataError as err:
        logging.error("%s", err)
        print(f"stopped: {err}", file=sys.stderr)
        sys.exit(4)
    result = results[0]
    if result.interrupted_by is not None:
        name = signal.Signals(result.interrupted_by).name
        if lead:
            print(
                f"interrupted by {name} at env step {result.env_steps}; a final checkpoint is "
                f"in {os.path.abspath(workdir)}/checkpoints: rerun the same command to resume",
                file=sys.stderr,
            )
        sys.exit(128 + result.interrupted_by)  # the shell's convention for "ended by a signal"
    for result in results if lead else []:
        final = result.eval_returns[-1] if result.eval_returns else None
        summary = f"trained {result.env_steps} env steps"
        if final is not None:
            summary += f"; final eval return {final[1]:.1f} ± {final[2]:.1f}"
        print(summary)
        print(
            f"results in {result.workdir} "
            "(metrics.jsonl, tensorboard/, checkpoints/, report/report.html)"
        )


def run():
    """Console-script entry point (``wm-jax-train``)."""
    from wm_jax import _allocator

    _allocator.tune()  # malloc settings for XLA's temp buffers: re-executes once (issue 18)
    app.run(main)


if __name__ == "__main__":
    run()
