"""Soak benchmark: one long CartPole run through the real CLI, with faults injected at random
times, restarted after each one the way a cluster scheduler would.

    python experiments/benchmarks/soak.py --workdir=runs/soak --faults=6

Faults (cycled in a seeded random order, each at a random env step):

* ``sigkill``: ``kill -9`` at an arbitrary moment;
* ``sigkill_mid_checkpoint``: ``kill -9`` while orbax is writing a checkpoint (its temporary
  directory exists);
* ``corrupt_checkpoint``: ``kill -9``, then truncate the newest complete checkpoint's data file;
* ``sigterm``: a polite stop (the run saves a final checkpoint and exits with 143).

Throughout, the environment itself returns a NaN observation or reward about once per thousand
steps (``experiments/envs/faulty.py``), repaired and counted by ``config.env_check=sanitize``.

Steps lost per fault = the newest env step the run had logged before the fault minus the step it
resumed from (a lower bound for kills, since the log is written every ``--log_every`` steps).
Prints a table and, last, one JSON line; writes ``soak.json`` to the workdir.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", "runs/soak", "output directory (must not exist)")
_CONFIG = flags.DEFINE_string("config", "experiments/configs/cartpole.py", "config file")
_STEPS = flags.DEFINE_integer("steps", 30_000, "env steps of the run")
_FAULTS = flags.DEFINE_integer("faults", 6, "faults to inject")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the run and of the fault plan")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 2_000, "env steps")
_LOG_EVERY = flags.DEFINE_integer("log_every", 250, "env steps")

KINDS = ("sigkill", "sigkill_mid_checkpoint", "corrupt_checkpoint", "sigterm")
ENV_ID = "experiments.envs.faulty:FaultyCartPole-v1"


def _logged_step(workdir: str) -> int:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    steps = [0]
    with open(path) as f:
        for line in f:
            try:
                steps.append(int(json.loads(line)["env_step"]))
            except (ValueError, KeyError):  # a line cut short by a kill
                pass
    return max(steps)


def _checkpoints(workdir: str) -> tuple[list[int], list[str]]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return [], []
    names = os.listdir(directory)
    return sorted(int(n) for n in names if n.isdigit()), [n for n in names if "tmp" in n]


def _start(workdir: str, attempt: int):
    cmd = [
        sys.executable,
        "-m",
        "wm_jax.train",
        f"--config={_CONFIG.value}",
        f"--workdir={workdir}",
        f"--seed={_SEED.value}",
        f"--config.env_id={ENV_ID}",
        "--config.env_check=sanitize",
        f"--config.total_env_steps={_STEPS.value}",
        f"--config.checkpoint_every={_CHECKPOINT_EVERY.value}",
        f"--config.log_every={_LOG_EVERY.value}",
    ]
    log_path = os.path.join(workdir, f"attempt_{attempt}.log")
    log = open(log_path, "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log_path


def _resumed_from(log_path: str) -> int | None:
    """The env step the restarted run resumed from (0: no checkpoint, it started afresh)."""
    with open(log_path) as f:
        text = f.read()
    match = re.search(r"resumed from checkpoint at env step (\d+)", text)
    if match:
        return int(match.group(1))
    return 0 if "starting from scratch" in text else None


def _truncate_newest(workdir: str) -> int:
    steps, _ = _checkpoints(workdir)
    data = os.path.join(workdir, "checkpoints", str(steps[-1]), "state", "d")
    victim = max((os.path.join(data, n) for n in os.listdir(data)), key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    return steps[-1]


def main(argv):
    del argv
    workdir = os.path.abspath(_WORKDIR.value)
    if os.path.exists(workdir):
        raise app.UsageError(f"{workdir} exists; the soak needs a fresh workdir")
    os.makedirs(workdir)
    rng = np.random.default_rng(_SEED.value)
    kinds = [KINDS[i % len(KINDS)] for i in rng.permutation(_FAULTS.value)]
    # Fault times: spread over the run, after the first checkpoints exist.
    targets = np.sort(rng.uniform(_CHECKPOINT_EVERY.value * 2.5, _STEPS.value * 0.95, len(kinds)))
    faults = []
    start = time.time()
    attempt = 0
    proc, log_path = _start(workdir, attempt)
    for kind, target in zip(kinds, targets, strict=True):
        while proc.poll() is None and _logged_step(workdir) < target:
            time.sleep(0.2)
        if proc.poll() is not None:
            break  # the run finished (or failed) before this fault's time
        if kind == "sigkill_mid_checkpoint":
            while proc.poll() is None and not _checkpoints(workdir)[1]:
                time.sleep(0.002)
        if kind == "corrupt_checkpoint":  # keep an older complete checkpoint to fall back on
            while proc.poll() is None and len(_checkpoints(workdir)[0]) < 2:
                time.sleep(0.2)
        if proc.poll() is not None:
            break
        before = _logged_step(workdir)
        fault = {"kind": kind, "env_step": before}
        if kind == "sigterm":
            proc.send_signal(signal.SIGTERM)
            fault["exit_code"] = proc.wait(timeout=600)
        else:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            fault["exit_code"] = proc.returncode
            fault["partial_write_left"] = bool(_checkpoints(workdir)[1])
        if kind == "corrupt_checkpoint":
            fault["corrupted_step"] = _truncate_newest(workdir)
        attempt += 1
        proc, log_path = _start(workdir, attempt)
        while proc.poll() is None and _resumed_from(log_path) is None:
            time.sleep(0.2)
        resumed = _resumed_from(log_path)
        fault["resumed_from"] = resumed
        fault["steps_lost"] = None if resumed is None else max(0, before - resumed)
        fault["survived"] = resumed is not None
        faults.append(fault)
        print(json.dumps(fault), flush=True)
    returncode = proc.wait()
    wall = time.time() - start

    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    evals = [r["eval_return"] for r in records if "eval_return_std" in r]
    repaired = {
        k: int(sum(r.get(k, 0) for r in records)) for k in ("env_invalid_obs", "env_invalid_reward")
    }
    skipped = max((r.get("world_model_nonfinite_total", 0) for r in records), default=0)
    summary = {
        "completed": returncode == 0,
        "final_env_step": _logged_step(workdir),
        "faults_injected": len(faults),
        "faults_survived": sum(f["survived"] for f in faults),
        "steps_lost_total": int(sum(f["steps_lost"] or 0 for f in faults)),
        "steps_lost_max": int(max((f["steps_lost"] or 0 for f in faults), default=0)),
        "env_data_repaired": repaired,
        "world_model_updates_skipped": skipped,
        "final_eval_return": evals[-1] if evals else None,
        "wall_s": round(wall, 1),
        "faults": faults,
        "quarantined": sorted(os.listdir(os.path.join(workdir, "checkpoints_corrupt")))
        if os.path.isdir(os.path.join(workdir, "checkpoints_corrupt"))
        else [],
    }
    print("| fault | at env step | resumed from | steps lost | exit code |")
    print("|---|---|---|---|---|")
    for f in faults:
        print(
            f"| {f['kind']} | {f['env_step']} | {f['resumed_from']} | {f['steps_lost']} | "
            f"{f['exit_code']} |"
        )
    with open(os.path.join(workdir, "soak.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
