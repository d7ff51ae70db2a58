"""Pieces the benchmarks share: a random batch, and :func:`save_result`, which keeps each run's
summary in ``experiments/results/`` so a figure quoted in BUILD_NOTES.md can be traced to a
committed file (issue 23).

Imports nothing heavy at the top: the driver benchmarks (learning, soak, failure_modes,
cartpole_race and its SB3 children) import this module too, and their timings must not pay for
JAX."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
from absl import flags

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS_DIR = os.path.join(_ROOT, "experiments", "results")

RESULTS = flags.DEFINE_string(
    "results_dir",
    RESULTS_DIR,
    "where the run's summary is kept, as <results_dir>/<benchmark>/<UTC date>-<cpu>.json "
    "('' keeps nothing)",
)

# Always recorded; the optional ones only when the run used them (imported here, or named by the
# caller for a child process), so a file does not claim a library it never touched.
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy")
_OPTIONAL = {"torch": "torch", "stable-baselines3": "stable_baselines3"}


def random_batch(config, spec, rng: np.random.Generator):
    """A batch of the config's layout (flat or ``[B, T]`` sequences) with random observations,
    random discrete actions, unit rewards and ~5 % terminations: timing needs shapes, not data.
    Observations take the spec's dtype: uint8 boards of {0, 255} (~10 % lit) for images, so a
    pixel config is timed on its real uint8 input path."""
    from wm_jax.types import Sequence, Transition  # here, not above: see the module docstring

    b, t = config.batch_size, config.sequence_length
    act = np.eye(spec.action_dim, dtype=np.float32)[rng.integers(0, spec.action_dim, (b, t))]

    def obs(*lead):
        if np.issubdtype(np.dtype(spec.obs_dtype), np.integer):
            return ((rng.random((*lead, *spec.obs_shape)) > 0.9) * 255).astype(spec.obs_dtype)
        return rng.normal(size=(*lead, *spec.obs_shape)).astype(np.float32)

    if config.sequence_mode:
        return Sequence(
            obs=obs(b, t + 1),
            action=act,
            reward=np.ones((b, t), np.float32),
            cont=(rng.random((b, t)) > 0.05).astype(np.float32),
            mask=np.ones((b, t), np.float32),
        )
    return Transition(
        obs=obs(b),
        action=act[:, 0],
        reward=np.ones(b, np.float32),
        next_obs=obs(b),
        cont=(rng.random(b) > 0.05).astype(np.float32),
        mask=np.ones(b, np.float32),
    )


def cpu_model() -> str:
    """The CPU's marketing name: on a shared machine the model, not the host, explains speed."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_slug(cpu: str) -> str:
    """A short file-name-safe name for a CPU model: ``Intel(R) Xeon(R) Processor`` ->
    ``intel-xeon-processor``, ``AMD EPYC 7B13 64-Core Processor`` -> ``amd-epyc-7b13-64-core-
    processor`` (the clock after ``@`` is dropped: it does not name a different machine)."""
    name = re.sub(r"\((r|tm|c)\)", " ", cpu.split("@")[0], flags=re.IGNORECASE).lower()
    slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-")[:48].strip("-")
    return slug or "unknown-cpu"


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """HEAD of this checkout, ``+dirty`` with uncommitted changes to tracked files: the code a
    figure came from."""

    def run(*args):
        cmd = ["git", "-C", _ROOT, *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)

    try:
        head = run("rev-parse", "HEAD")
        if head.returncode:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _device() -> dict | None:
    try:
        import jax

        d = jax.devices()[0]
        return {"platform": d.platform, "kind": d.device_kind}
    except Exception:  # a summary is still worth keeping without it
        return None


def save_result(
    benchmark: str,
    summary: dict,
    *,
    figure: str | None = None,
    results_dir: str | None = None,
    packages: tuple[str, ...] = (),
) -> str | None:
    """Writes ``summary`` with where and how it was measured to
    ``<results_dir>/<benchmark>/<UTC date>-<cpu slug>.json`` (``-2``, ``-3``, ... when that name
    is taken: a kept result is never overwritten) and copies ``figure`` beside it as the same
    name with ``.png``; returns the JSON's path, or None when ``results_dir`` is ``''``.

    ``results_dir`` defaults to ``--results_dir``.  The provenance fields (``benchmark``,
    ``command``, ``date_utc``, ``cpu``, ``device``, ``versions``, ...) replace any of the same
    name in ``summary`` (a script's own ``command`` or ``cpu`` states the same facts); a
    summary's own ``versions`` are kept beside the standard ones.  ``packages`` names libraries
    the run used in a child process (e.g. stable-baselines3 for cartpole_race).  Call it before
    printing the benchmark's last JSON line: it prints where it wrote."""
    if results_dir is None:
        results_dir = RESULTS.value if flags.FLAGS.is_parsed() else RESULTS.default
    if not results_dir:
        return None
    now = datetime.datetime.now(datetime.UTC)
    cpu = cpu_model()
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.isfile(argv0) and os.path.abspath(argv0).startswith(_ROOT + os.sep):
        argv0 = os.path.relpath(os.path.abspath(argv0), _ROOT)  # the same from any directory
    versions = {"python": platform.python_version()}
    used = [p for p, module in _OPTIONAL.items() if module in sys.modules]
    for name in (*_PACKAGES, *used, *packages):
        versions[name] = _version(name)
    provenance = {
        "benchmark": benchmark,
        "command": shlex.join(["python", argv0, *sys.argv[1:]]),
        "date_utc": now.isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "loadavg_at_save": [round(x, 2) for x in os.getloadavg()],
        "device": _device(),
        "git_commit": _git_commit(),
        "versions": {**(summary.get("versions") or {}), **versions},
    }
    record = {**provenance, **{k: v for k, v in summary.items() if k not in provenance}}
    folder = os.path.join(results_dir, benchmark)
    os.makedirs(folder, exist_ok=True)
    stem = f"{now:%Y-%m-%d}-{machine_slug(cpu)}"
    n = 1
    while True:
        name = stem if n == 1 else f"{stem}-{n}"
        path = os.path.join(folder, name + ".json")
        png = os.path.join(folder, name + ".png")
        if not (figure and os.path.exists(png)):
            try:  # "x": two runs saving at once cannot both take one name
                with open(path, "x") as f:
                    json.dump(record, f, indent=1)
                    f.write("\n")
                break
            except FileExistsError:
                pass
        n += 1
    if figure:
        shutil.copyfile(figure, png)
    print(f"result kept: {path}", flush=True)
    return path


# SB3 agents with rl-zoo hyperparameters (``cartpole_race.py``'s HYPERPARAMS) per task; their
# runs are ``cartpole_race.py --child=<agent>`` processes that print one line per event.
SB3_AGENTS = {"CartPole-v1": ("dqn", "ppo"), "Pendulum-v1": ("sac",)}
SB3_PREFIX = "CARTPOLE_RACE "  # a child's result lines on stdout
RACE_SCRIPT = os.path.join(_ROOT, "experiments", "benchmarks", "cartpole_race.py")


def sb3_agents_for(env_id: str, names: list[str]) -> list[str]:
    """``names`` checked against the task's SB3 agents (``["auto"]``: all of them); raises
    ``ValueError`` naming what the task has when one has no rl-zoo hyperparameters here."""
    have = SB3_AGENTS.get(env_id, ())
    agents = list(have) if names == ["auto"] else names
    unknown = [a for a in agents if a not in have]
    if unknown or (names and not agents):
        raise ValueError(
            f"no rl-zoo hyperparameters for {unknown or names} on {env_id} here; "
            f"{env_id} has {', '.join(have) or 'none'} (experiments/benchmarks/cartpole_race.py)"
        )
    return agents


def sb3_rows(stdout: str) -> list[dict]:
    """The event rows (``ready``, ``eval``, ``end``) an SB3 child printed."""
    return [
        json.loads(line[len(SB3_PREFIX) :])
        for line in stdout.splitlines()
        if line.startswith(SB3_PREFIX)
    ]


def child_env() -> dict:
    """The environment of a benchmark's child process: this checkout's wm_jax first on the
    path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
    return env


def run_sb3(agent: str, seed: int, args: list[str], log_path: str) -> list[dict]:
    """Runs one SB3 child (``cartpole_race.py --child``, its flags ``args``) with this checkout
    first on the path; returns its event rows, or exits naming its log if it failed."""
    cmd = [sys.executable, RACE_SCRIPT, f"--child={agent}", f"--seed={seed}", *args]
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=child_env())
    rows = sb3_rows(proc.stdout)
    if proc.returncode != 0 or not rows or rows[-1]["event"] != "end":
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"{agent} seed {seed} failed (exit {proc.returncode}):\n{tail}")
    return rows
