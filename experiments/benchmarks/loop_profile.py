"""Where a training run's wall time goes: the host loop of ``wm_jax.trainer`` timed by phase.

    python experiments/benchmarks/loop_profile.py --config=experiments/configs/cartpole.py
    python experiments/benchmarks/loop_profile.py --config.total_env_steps=10000

Runs the config through :class:`wm_jax.trainer.Trainer` exactly as ``python -m wm_jax.train``
does, with each phase of the loop wrapped in a timer: start-up (building the agent, envs,
replay), acting (the policy's jitted call), env stepping, replay writes, the normaliser,
sampling a batch and moving it to the device, the jitted train step (blocked on, so its time is
its own), evaluation, logging (including the open-loop check) and checkpointing.  Also counts
the XLA programs the run compiles (``jax_log_compiles``) and their total compile time
(``jax.monitoring``).  Prints a table and, last, one JSON line.

Before/after tables: profile an older checkout with ``PYTHONPATH=<checkout>`` from another
directory, and ``WM_JAX_NO_ALLOCATOR_TUNING=1 WM_JAX_COMPILATION_CACHE=0`` (an editable install
would otherwise lend the old checkout this tree's allocator settings and compilation cache).

Blocking on the train step removes the little overlap the CPU backend has between a step and
the next host work, so the total is a slight upper bound of a plain run.
"""

from __future__ import annotations

import collections
import json
import logging as py_logging
import os
import re
import sys
import tempfile
import time

import jax
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import save_result  # noqa: E402

from wm_jax import config as config_module  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", default=config_module.__file__, help_string="config file; --config.x=y overrides"
)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (default: a temporary one)")
_CACHE = flags.DEFINE_bool(
    "compilation_cache", True, "use the persistent compilation cache, as the CLI does"
)


class Timers:
    def __init__(self):
        self.seconds = collections.defaultdict(float)
        self.calls = collections.defaultdict(int)

    def wrap(self, name, fn, block=False):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            if block:
                jax.block_until_ready(out)
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1
            return out

        return timed


class _CompileCounter(py_logging.Handler):
    """Counts compiled programs and keeps each one's name and XLA compile seconds."""

    _FINISHED = re.compile(r"Finished XLA compilation of (.+?) in ([0-9.eE+-]+) sec")

    def __init__(self):
        super().__init__()
        self.count = 0
        self.programs = []  # (name, seconds)

    def emit(self, record):
        message = record.getMessage()
        if "Compiling" in message or "compiling" in message:
            self.count += 1
        finished = self._FINISHED.search(message)
        if finished:
            self.programs.append((finished.group(1), float(finished.group(2))))


def main(argv):
    del argv
    # As python -m wm_jax.train does; guarded so the script also profiles an older checkout
    # (PYTHONPATH=<checkout>) for a before/after table.
    try:
        from wm_jax import _allocator

        _allocator.tune()  # re-executes once, before any JAX work
    except ImportError:
        pass
    from wm_jax.trainer import Trainer

    if _CACHE.value:
        try:
            from wm_jax.compilation_cache import enable_compilation_cache

            enable_compilation_cache()
        except ImportError:
            pass

    compile_seconds = [0.0]

    def on_duration(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compile_seconds[0] += duration

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.config.update("jax_log_compiles", True)
    counter = _CompileCounter()
    jax_logger = py_logging.getLogger("jax")
    jax_logger.addHandler(counter)
    jax_logger.propagate = False  # counted, not printed (the messages list every argument)

    config = _CONFIG.value
    workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="wm_jax_loop_profile_")
    timers = Timers()
    wall_start = time.perf_counter()
    trainer = Trainer(config, workdir)
    startup = time.perf_counter() - wall_start
    # The phases, wrapped on the instance (the loop calls them through self).
    trainer._act = timers.wrap("act (policy)", trainer._act)
    trainer.envs.step = timers.wrap("env step", trainer.envs.step)
    trainer.replay.add = timers.wrap("replay add", trainer.replay.add)
    trainer.normalizer.update = timers.wrap("normaliser", trainer.normalizer.update)
    trainer._sample = timers.wrap("sample batch", trainer._sample)
    if hasattr(trainer, "ahead"):  # the train step with later phases compiled in the background
        trainer.ahead.step = timers.wrap("train step (jitted)", trainer.ahead.step, block=True)
    else:  # a checkout from before wm_jax.ahead (PYTHONPATH=<old checkout>)
        trainer.steps = trainer.steps._replace(  # a NamedTuple of jitted functions
            train_step=timers.wrap("train step (jitted)", trainer.steps.train_step, block=True)
        )
    trainer._evaluate = timers.wrap("evaluation", trainer._evaluate)
    if hasattr(trainer, "_check_nonfinite"):
        trainer._check_nonfinite = timers.wrap("non-finite check", trainer._check_nonfinite)
    import wm_jax.report

    wm_jax.report.write_report = timers.wrap("report", wm_jax.report.write_report)
    trainer._log = timers.wrap("logging + open-loop", trainer._log)
    trainer.save = timers.wrap("checkpoint", trainer.save)
    run_start = time.perf_counter()
    try:
        result = trainer.run()
    finally:
        trainer.close()
    loop_wall = time.perf_counter() - run_start
    wall = time.perf_counter() - wall_start
    rows = [("start-up (agent, envs, replay)", startup, 1)]
    rows += [(name, timers.seconds[name], timers.calls[name]) for name in timers.seconds]
    accounted = sum(seconds for _, seconds, _ in rows)
    rows.append(("other (loop bookkeeping, report, close)", wall - accounted, 0))
    print(f"{'phase':42s} {'seconds':>9s} {'share':>7s} {'calls':>7s}")
    for name, seconds, calls in rows:
        print(f"{name:42s} {seconds:9.2f} {seconds / wall:7.1%} {calls:7d}")
    summary = {
        "env_steps": result.env_steps,
        "wall_s": wall,
        "loop_wall_s": loop_wall,
        "env_steps_per_s": result.env_steps / loop_wall,
        "train_step_share": timers.seconds["train step (jitted)"] / wall,
        "wm_jax": os.path.dirname(
            os.path.dirname(
                os.path.abspath(Trainer.__module__ and sys.modules[Trainer.__module__].__file__)
            )
        ),
        "programs_compiled": counter.count,
        "compile_s": compile_seconds[0],
        "phases_s": {name: seconds for name, seconds, _ in rows},
        "final_eval": result.eval_returns[-1] if result.eval_returns else None,
        "jax_compilation_cache_dir": jax.config.jax_compilation_cache_dir,
        "compiled_programs_s": sorted(counter.programs, key=lambda p: -p[1]),
    }
    print(f"programs compiled: {counter.count} ({compile_seconds[0]:.1f} s of XLA compilation)")
    for name, seconds in summary["compiled_programs_s"]:
        print(f"  {seconds:7.2f} s  {name}")
    save_result("loop_profile", summary)
    print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
