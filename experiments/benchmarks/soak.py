"""Soak benchmark: one long CartPole run through the real CLI, with faults injected at random
times, restarted after each one the way a cluster scheduler would.

    python experiments/benchmarks/soak.py --workdir=runs/soak --faults=6

Faults (cycled in a seeded random order, each at a random env step):

* ``sigkill``: ``kill -9`` at an arbitrary moment;
* ``sigkill_mid_checkpoint``: ``kill -9`` while orbax is writing a checkpoint (its temporary
  directory exists);
* ``corrupt_checkpoint``: ``kill -9``, then truncate the newest complete checkpoint's data file;
* ``sigterm``: a polite stop (the run saves a final checkpoint and exits with 143);
* ``sigterm_in_eval``: SIGTERM while an evaluation runs (it must be abandoned within seconds);
* ``concurrent_start``: a second run started on the same workdir (it must exit at once with
  status 5 and leave the first running unharmed; no restart needed);
* ``env_exception``: the environment raises inside ``step()`` (the run must stop with status 8
  and resume once the environment works again);
* ``disk_full`` (``--disk_mb``, root only: the workdir is a tmpfs of that size): the disk is
  filled up; the run must stop with status 7 and resume once space is freed.

Throughout, the environment itself returns a NaN observation or reward about once per thousand
steps (``experiments/envs/faulty.py``), repaired and counted by ``config.env_check=sanitize``.

Steps lost per fault = the newest env step the run had logged before the fault minus the step it
resumed from (a lower bound for kills, since the log is written every ``--log_every`` steps);
wall time lost = from the fault until the restarted run has logged that step again.  A fault is
survived when the expected exit status came and the restart resumed from a checkpoint (a restart
from scratch after checkpoints existed is a failure).  At the end, every log row's env step must
appear once in ``metrics.jsonl`` (``duplicated_rows`` must be 0).
Prints a table and, last, one JSON line; writes ``soak.json`` next to the workdir.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import save_result  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/soak", "output directory (must not exist)")
_CONFIG = flags.DEFINE_string("config", "experiments/configs/cartpole.py", "config file")
_STEPS = flags.DEFINE_integer("steps", 30_000, "env steps of the run")
_FAULTS = flags.DEFINE_integer("faults", 6, "faults to inject")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the run and of the fault plan")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 2_000, "env steps")
_LOG_EVERY = flags.DEFINE_integer("log_every", 250, "env steps")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 2_500, "env steps")
_DISK_MB = flags.DEFINE_integer(
    "disk_mb", 0, "run on a tmpfs of this size and add the disk_full fault (root only; 0: off)"
)

KINDS = (
    "sigkill",
    "sigkill_mid_checkpoint",
    "corrupt_checkpoint",
    "sigterm",
    "sigterm_in_eval",
    "concurrent_start",
    "env_exception",
)
EXPECTED_EXIT = {
    "sigterm": 128 + signal.SIGTERM,
    "sigterm_in_eval": 128 + signal.SIGTERM,
    "env_exception": 8,
    "disk_full": 7,
}
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


def _start(workdir: str, attempt: int, name: str = "attempt"):
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
        f"--config.eval_every={_EVAL_EVERY.value}",
    ]
    log_path = os.path.join(_LOG_DIR[0], f"{name}_{attempt}.log")
    log = open(log_path, "w")
    env = {**os.environ, "WM_JAX_FAULTY_RAISE_FILE": _raise_file(workdir)}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log_path


_LOG_DIR = [""]  # the soak's root: logs and the trigger file stay off the (filled) tmpfs


def _raise_file(workdir: str) -> str:
    return os.path.join(_LOG_DIR[0], "env_raise_now")


def _log_text(log_path: str) -> str:
    with open(log_path, errors="replace") as f:
        return f.read()


def _fill_disk(directory: str) -> str:
    path = os.path.join(directory, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * (1 << 20))
    except OSError:
        pass
    finally:
        os.close(fd)
    return path


def _duplicated_rows(workdir: str) -> int:
    """Log rows (and eval rows) whose env step appears more than once in metrics.jsonl."""
    from wm_jax.metrics import read_metrics

    seen: dict[tuple, int] = {}
    for row in read_metrics(workdir):
        kind = "eval" if "eval_return_std" in row else "log" if "updates" in row else "other"
        seen[(kind, row["env_step"])] = seen.get((kind, row["env_step"]), 0) + 1
    return sum(n - 1 for n in seen.values())


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
    root = os.path.abspath(_WORKDIR.value)
    if os.path.exists(root):
        raise app.UsageError(f"{root} exists; the soak needs a fresh workdir")
    os.makedirs(root)
    kinds_all = KINDS
    if _DISK_MB.value:
        if os.geteuid() != 0:
            raise app.UsageError("--disk_mb mounts a tmpfs: run as root, or drop it")
        disk = os.path.join(root, "disk")
        os.makedirs(disk)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={_DISK_MB.value}m", "tmpfs", disk], check=True
        )
        kinds_all = (*KINDS, "disk_full")
        workdir = os.path.join(disk, "run")
    else:
        disk = None
        workdir = os.path.join(root, "run")
    try:
        summary = _soak(root, workdir, disk, kinds_all)
    finally:
        if disk is not None:
            subprocess.run(["umount", "-l", disk], check=False)
    save_result("soak", summary)
    print(json.dumps(summary))


def _soak(root: str, workdir: str, disk: str | None, kinds_all) -> dict:
    _LOG_DIR[0] = root
    rng = np.random.default_rng(_SEED.value)
    kinds = [kinds_all[i % len(kinds_all)] for i in rng.permutation(_FAULTS.value)]
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
        if kind == "sigterm_in_eval":  # wait for the next evaluation to start
            seen = _log_text(log_path).count("evaluating")
            while proc.poll() is None and _log_text(log_path).count("evaluating") == seen:
                time.sleep(0.05)
            time.sleep(0.2)
        if proc.poll() is not None:
            break
        before = _logged_step(workdir)
        had_checkpoint = bool(_checkpoints(workdir)[0])
        fault = {"kind": kind, "env_step": before}
        t_fault = time.time()
        if kind == "concurrent_start":
            second, second_log = _start(workdir, attempt, name="concurrent")
            fault["exit_code"] = second.wait(timeout=600)
            fault["refused_in_s"] = round(time.time() - t_fault, 1)
            fault["first_still_running"] = proc.poll() is None
            fault["survived"] = fault["exit_code"] == 5 and fault["first_still_running"]
            fault["resumed_from"], fault["steps_lost"], fault["wall_lost_s"] = None, 0, 0.0
            faults.append(fault)
            print(json.dumps(fault), flush=True)
            continue
        if kind in ("sigterm", "sigterm_in_eval"):
            proc.send_signal(signal.SIGTERM)
            fault["exit_code"] = proc.wait(timeout=600)
            fault["stopped_in_s"] = round(time.time() - t_fault, 1)
        elif kind == "env_exception":
            open(_raise_file(workdir), "w").close()
            fault["exit_code"] = proc.wait(timeout=600)
            os.remove(_raise_file(workdir))
        elif kind == "disk_full":
            filler = _fill_disk(disk)
            try:
                fault["exit_code"] = proc.wait(timeout=300)
            except subprocess.TimeoutExpired:  # a hang is a failure: record it, go on
                proc.kill()
                proc.wait()
                fault["exit_code"] = "hung"
            os.remove(filler)
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
        while proc.poll() is None and _logged_step(workdir) < before:
            time.sleep(0.2)
        fault["wall_lost_s"] = round(time.time() - t_fault, 1)
        # The next fault hits a running loop, not the restart's start-up.
        while proc.poll() is None and _logged_step(workdir) <= max(before, resumed or 0):
            time.sleep(0.2)
        expected = EXPECTED_EXIT.get(kind, -signal.SIGKILL)
        from_checkpoint = resumed is not None and (resumed > 0 or not had_checkpoint)
        fault["survived"] = fault["exit_code"] == expected and from_checkpoint
        faults.append(fault)
        print(json.dumps(fault), flush=True)
    returncode = proc.wait()
    wall = time.time() - start

    from wm_jax.metrics import read_metrics

    records = read_metrics(workdir)
    evals = [r["eval_return"] for r in records if "eval_return_std" in r]
    repaired = {
        k: int(sum(r.get(k, 0) for r in records)) for k in ("env_invalid_obs", "env_invalid_reward")
    }
    skipped = {
        group: max((r.get(f"{group}_nonfinite_total") or 0 for r in records), default=0)
        for group in ("world_model", "actor", "critic")
    }
    summary = {
        "completed": returncode == 0,
        "final_env_step": _logged_step(workdir),
        "faults_injected": len(faults),
        "faults_survived": sum(f["survived"] for f in faults),
        "steps_lost_total": int(sum(f["steps_lost"] or 0 for f in faults)),
        "steps_lost_max": int(max((f["steps_lost"] or 0 for f in faults), default=0)),
        "env_data_repaired": repaired,
        "updates_skipped": skipped,
        "duplicated_rows": _duplicated_rows(workdir),
        "final_eval_return": evals[-1] if evals else None,
        "wall_s": round(wall, 1),
        "faults": faults,
        "quarantined": sorted(os.listdir(os.path.join(workdir, "checkpoints_corrupt")))
        if os.path.isdir(os.path.join(workdir, "checkpoints_corrupt"))
        else [],
    }
    print("| fault | at env step | exit | resumed from | steps lost | wall lost (s) | survived |")
    print("|---|---|---|---|---|---|---|")
    for f in faults:
        print(
            f"| {f['kind']} | {f['env_step']} | {f['exit_code']} | {f['resumed_from']} | "
            f"{f['steps_lost']} | {f['wall_lost_s']} | {f['survived']} |"
        )
    with open(os.path.join(root, "soak.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    app.run(main)
