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
import shlex
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from wm_jax import cli
from wm_jax import config as config_module

_CONFIG = cli.define_config_flag(config_module.__file__)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Run directory (metrics, TensorBoard, checkpoints). Default: runs/<config file>-<env>-"
    "seed<S>[-<hash of the --config.* overrides>], so rerunning the same command resumes.",
)
_SEED = flags.DEFINE_integer("seed", None, "Overrides config.seed.")
_SEEDS = flags.DEFINE_string(
    "seeds",
    None,
    "Several seeds, e.g. 0,1,2 (not with --seed): one run per seed in <workdir>/seed_<S>. The "
    "host loop trains them one after another in this process (the simplest correct choice); "
    "rerunning the same command resumes unfinished seeds and leaves finished ones as they are. "
    "Then <workdir>/report/ shows every seed's eval curve, their mean and ±1 standard error. "
    "With --config.loop=device the seeds must be consecutive (S,S+1,..): they become "
    "config.seed=S, config.num_seeds=n, trained at once with jax.vmap.",
)
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
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config",
    False,
    "Print the resolved config (file + overrides + --seed/--env_kwargs) as JSON and exit.",
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
        cli.usage_exit(f"--env_kwargs is not valid JSON ({err}): {text!r}")
    if not isinstance(value, dict):
        cli.usage_exit(f"--env_kwargs must be a JSON object, got {text!r}")
    return value


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        cli.usage_exit(f"--seeds takes comma-separated integers, e.g. --seeds=0,1,2; got {text!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        cli.usage_exit(f"--seeds needs distinct integers, e.g. --seeds=0,1,2; got {text!r}")
    return seeds


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
        cli.usage_exit(f"unexpected arguments: {argv[1:]}")
    cli.exit_on_termination()
    seeds = None
    if _SEEDS.value is not None:
        if _SEED.value is not None:
            cli.usage_exit("--seeds and --seed together: give one of them")
        seeds = _seeds(_SEEDS.value)
        if _COORDINATOR.value or _NUM_PROCESSES.value or _DISTRIBUTED.value:
            cli.usage_exit("--seeds runs in one process; a multi-process run trains one seed")
    host_seeds = seeds is not None and _CONFIG.value.get("loop", "host") != "device"
    config = _CONFIG.value
    with config.unlocked():
        if _SEED.value is not None:
            config.seed = _SEED.value
        if seeds is not None and not host_seeds:
            if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
                cli.usage_exit(
                    f"--seeds={_SEEDS.value} with config.loop=device: the device loop trains "
                    "consecutive seeds S,S+1,..,S+n-1 (config.seed, config.num_seeds); give "
                    "such a list or use the host loop"
                )
            config.seed, config.num_seeds = seeds[0], len(seeds)
        if _ENV_KWARGS.value:
            config.env_kwargs.update(_env_kwargs(_ENV_KWARGS.value))
    from wm_jax.config import ConfigError, check_known_fields, check_wandb_installed, validate

    try:  # before importing JAX or making the env: a bad value is named in a second
        check_known_fields(config)
        validate(config)
        check_wandb_installed(config)
    except ConfigError as err:
        cli.usage_exit(str(err), cli.CONFIG_HINT)
    if _PRINT_CONFIG.value:
        print(config.to_json_best_effort(indent=1, sort_keys=True))
        return
    multiprocess = bool(_COORDINATOR.value or _NUM_PROCESSES.value or _DISTRIBUTED.value)
    if multiprocess and not _WORKDIR.value:
        cli.usage_exit(
            "--workdir is required with several processes: every process must name the same "
            "directory (on a filesystem all of them see)"
        )
    workdir = _WORKDIR.value or cli.default_workdir(
        config_flags.get_config_filename(flags.FLAGS["config"]), config, _SEEDS.value, sys.argv
    )
    probed = [os.path.join(workdir, f"seed_{s}") for s in seeds] if host_seeds else [workdir]
    for path in [] if multiprocess else probed:
        from wm_jax.errors import EXIT_LOCKED, stop_with
        from wm_jax.run_dir import RunDir, WorkdirLockedError

        try:  # before importing JAX: a second run on a busy workdir (or seed) is refused at once
            RunDir.probe(path)
        except WorkdirLockedError as err:
            stop_with(err, EXIT_LOCKED)
    cli.configure_logging(lead=True)  # quiet from the start; other processes: below
    cli.offscreen_rendering()
    _join_processes()
    cli.enable_compilation_cache()
    import jax

    from wm_jax.loops import train_all

    lead = jax.process_index() == 0  # process 0 prints the summary
    cli.configure_logging(lead)  # one process reports
    if lead:
        logging.info("run directory %s: rerun the same command to resume", workdir)
    if host_seeds:
        results = _train_seeds(config, workdir, seeds)
    else:
        results = cli.run_with_exit_statuses(lambda: train_all(config, workdir), workdir)
    interrupted = [r for r in results if r.interrupted_by is not None]
    result = interrupted[0] if interrupted else results[0]
    if result.interrupted_by is not None:
        name = signal.Signals(result.interrupted_by).name
        if lead:
            print(
                f"interrupted by {name} at env step {result.env_steps}; a final checkpoint is "
                f"in {os.path.abspath(result.workdir)}/checkpoints: rerun the same command to "
                "resume",
                file=sys.stderr,
            )
        sys.exit(128 + result.interrupted_by)  # the shell's convention for "ended by a signal"
    for result in results if lead else []:
        final = result.eval_returns[-1] if result.eval_returns else None
        summary = f"trained {result.env_steps} env steps"
        if final is not None:
            summary += f"; final eval return {final[1]:.1f} ± {final[2]:.1f}"
        print(summary)
        best_dir = os.path.join(result.workdir, "best")
        if result.eval_returns and os.path.isdir(best_dir):
            step, mean, std = max(result.eval_returns, key=lambda e: e[1])
            print(
                f"best eval return {mean:.1f} ± {std:.1f} at env step {step}, kept in "
                f"{best_dir}: python -m wm_jax.evaluate "
                f"--workdir={shlex.quote(result.workdir)} --which=best"
            )
        made = ["metrics.jsonl", "tensorboard/", "checkpoints/"]
        if config.report and result.env_steps >= config.total_env_steps:
            made.append("report/report.html")
        print(f"results in {result.workdir} ({', '.join(made)})")
    # (One device-loop seed trains in the workdir itself; a learning-rate sweep is no seed set.)
    if lead and (host_seeds or len(results) > 1) and not config.get("lr_sweep", ""):
        from wm_jax.report import write_seeds_report

        if seeds is None:  # --config.num_seeds: the device loop's seeds S, S+1, ...
            seeds = list(range(config.seed, config.seed + len(results)))
        runs = {s: r.workdir for s, r in zip(seeds, results, strict=True)}
        path = write_seeds_report(workdir, runs)
        print(f"{len(seeds)} seeds: mean eval curve with ±1 standard error in {path}")


def _train_seeds(config, workdir: str, seeds: list[int]) -> list:
    """``--seeds`` with the host loop: one run per seed in ``<workdir>/seed_<S>``, one after
    another; each resumes (or, finished, only reloads) like a single run.  Stops at the first
    interrupted seed (its result last)."""
    from wm_jax.loops import train
    from wm_jax.run_dir import read_finished, write_finished
    from wm_jax.shell import RunResult

    results = []
    for seed in seeds:
        seed_config = config.copy_and_resolve_references()
        seed_config.seed = seed
        seed_dir = os.path.join(workdir, f"seed_{seed}")
        done = read_finished(seed_dir, seed_config)
        if done is not None:  # finished with this very config: nothing to build or reload
            print(f"seed {seed}: finished earlier ({done['env_steps']} env steps), skipped")
            evals = [(int(e[0]), e[1], e[2]) for e in done["eval_returns"]]
            results.append(RunResult(seed_dir, done["env_steps"], evals, done["env_steps"]))
            continue
        result = cli.run_with_exit_statuses(lambda c=seed_config, d=seed_dir: train(c, d), seed_dir)
        results.append(result)
        if result.interrupted_by is not None:
            break
        if result.env_steps >= seed_config.total_env_steps:
            write_finished(seed_dir, result.env_steps, result.eval_returns)
    return results


def run():
    """Console-script entry point (``wm-jax-train``)."""
    from wm_jax import _allocator

    _allocator.tune()  # malloc settings for XLA's temp buffers: re-executes once (issue 18)
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    run()
