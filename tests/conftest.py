"""Shared, session-scoped fixtures: small agents compiled once for the whole suite."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import types

# Many tests start fresh processes (the CLI, kill-and-resume, multi-host) that compile the same
# programs again; one persistent XLA cache for the session lets each compile once.  Set before
# jax is imported so this process reads it too; subprocesses inherit it through os.environ.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="wm_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

# Tests compile hundreds of small programs and run each for a few steps, so LLVM's optimisation
# of the generated code costs more than it saves (BUILD_NOTES, "Suite time"); runs, benchmarks
# and the CLI keep XLA's default.  WM_JAX_TEST_XLA_OPT=1, or a level in $XLA_FLAGS, keeps theirs.
FAST_COMPILE_XLA = (
    ""
    if os.environ.get("WM_JAX_TEST_XLA_OPT") == "1"
    or "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", "")
    else "--xla_backend_optimization_level=0"
)
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_XLA}".strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from wm_jax.config import get_config, override  # noqa: E402
from wm_jax.types import Sequence, Transition  # noqa: E402

# In case a plugin imported jax before the environment was set.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")),
)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The command-line runs' shared settings: small and fast, yet through every phase (prefill,
# warmup, transition, full).
TINY = [
    "--config.total_env_steps=320",
    "--config.prefill_steps=64",
    "--config.schedule.warmup_steps=128",
    "--config.schedule.transition_steps=192",
    "--config.eval_every=160",
    "--config.eval_episodes=2",
    "--config.log_every=64",
    "--config.checkpoint_every=160",
    "--config.batch_size=16",
    "--config.model.feature_dim=16",
    "--config.model.state_dim=8",
    "--config.model.hidden_dim=16",
    "--config.model.hidden_layers=1",
    "--config.model.rssm_deter=16",  # for the RSSM configs (the README's first command)
    "--config.model.rssm_stoch=4",
    "--config.model.rssm_classes=4",
    "--config.imagination.horizon=4",
    "--config.diagnostics.open_loop_every=128",
    "--config.diagnostics.open_loop_horizon=8",
]

# Bit-exact CPU runs need one thread (jax issue #39741): see BUILD_NOTES.md.
SINGLE_THREAD_XLA = (
    f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1 {FAST_COMPILE_XLA}".strip()
)
DETERMINISTIC_ENV = {**os.environ, "XLA_FLAGS": SINGLE_THREAD_XLA, "JAX_PLATFORMS": "cpu"}


# Small disks for the full-disk tests: tmpfs mounts need root on Linux.
needs_tmpfs = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0, reason="mounts a small tmpfs (root on Linux)"
)


@contextlib.contextmanager
def mounted_tmpfs(path, options):
    """A tmpfs mounted at ``path`` (made here) with mount ``options`` (``"size=1m"``,
    ``"ro,size=1m"``) while the block runs; skips the test where it cannot be mounted."""
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr!r}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def run_cli(workdir, *extra, config_file=None, env=None):
    """``python -m wm_jax.train`` on ``workdir`` with :data:`TINY` and ``extra`` flags."""
    # --config=FILE must precede the --config.x=y overrides.
    config = [f"--config={config_file}"] if config_file else []
    cmd = [sys.executable, "-m", "wm_jax.train", f"--workdir={workdir}", *config, *TINY, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def small_config(**overrides):
    """The default config shrunk for fast tests (same code paths, tiny widths)."""
    c = get_config()
    c.model.feature_dim = 32
    c.model.state_dim = 8
    c.model.hidden_dim = 32
    # One hidden layer (LayerNorm and all) instead of two: every code path, fewer kernels to
    # trace and compile, which is most of the suite's time (BUILD_NOTES, 2026-12-06).
    c.model.hidden_layers = 1
    c.imagination.horizon = 5
    c.batch_size = 16
    # Tests compare programs bit for bit or against autodiff references: they must not depend on
    # which CPU CI draws ("auto" is bf16 on AMX/AVX512-BF16 CPUs).  bf16 and "auto" have their
    # own tests (tests/test_precision.py).
    c.precision = "float32"
    return override(c, **overrides)


def checkpoint_arrays(workdir, step=None) -> dict[str, np.ndarray]:
    """Everything checkpoint ``step`` (default: the newest) of the run in ``workdir`` holds, the
    train state and every extra (replay, normaliser, envs or device-loop state, counters, acting
    carry, evaluation history), as numpy arrays named by their path ("['state']['key']", ...),
    read against the checkpoint's own metadata."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(
        os.path.join(str(workdir), "checkpoints"),
        item_handlers={k: ocp.PyTreeCheckpointHandler() for k in ("state", "extras")},
    )
    try:
        step = manager.latest_step() if step is None else step
        meta = manager.item_metadata(step)
        args = {}
        for item in ("state", "extras"):
            as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta[item])
            args[item] = ocp.args.PyTreeRestore(item=meta[item], restore_args=as_numpy)
        restored = manager.restore(step, args=ocp.args.Composite(**args))
    finally:
        manager.close()
    leaves = jax.tree_util.tree_leaves_with_path({k: restored[k] for k in ("state", "extras")})
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves}


def make_spec(obs_shape=(4,), action_dim=2, discrete=True, obs_dtype=np.float32):
    return types.SimpleNamespace(
        obs_shape=tuple(obs_shape), obs_dtype=obs_dtype, action_dim=action_dim, discrete=discrete
    )


def random_actions(key, shape, spec):
    if spec.discrete:
        return jax.nn.one_hot(jax.random.randint(key, shape, 0, spec.action_dim), spec.action_dim)
    return jax.random.uniform(key, (*shape, spec.action_dim), minval=-1.0, maxval=1.0)


def random_sequence(key, spec, batch=4, length=6, terminate_at=None) -> Sequence:
    k1, k2, k3 = jax.random.split(key, 3)
    cont = jnp.ones((batch, length))
    if terminate_at is not None:
        cont = cont.at[:, terminate_at].set(0.0)
    return Sequence(
        obs=jax.random.normal(k1, (batch, length + 1, *spec.obs_shape)),
        action=random_actions(k2, (batch, length), spec),
        reward=jax.random.normal(k3, (batch, length)),
        cont=cont,
        mask=jnp.ones((batch, length)),
    )


def random_transitions(key, spec, batch=16) -> Transition:
    return random_sequence(key, spec, batch=batch, length=1).to_transitions()


@pytest.fixture(scope="session")
def discrete_spec():
    return make_spec(discrete=True)


@pytest.fixture(scope="session")
def continuous_spec():
    return make_spec(obs_shape=(3,), action_dim=1, discrete=False)


# Files by worker-seconds, heaviest first (a whole-suite `--durations=0` run, 2026-12-06).
# xdist's loadfile hands files to workers in collection order: starting the long files first
# keeps one of them from running alone at the end (longest-processing-time-first scheduling).
HEAVY_FIRST = (
    "test_update.py",
    "test_rssm.py",
    "test_device_loop.py",
    "test_crash_safety.py",
    "test_boundaries.py",
    "test_trust.py",
    "test_readme.py",
    "test_sharding.py",
    "test_transformer.py",
    "test_offline.py",
    "test_train.py",
    "test_multihost.py",
    "test_seeds.py",
    "test_update_equivalence.py",
    "test_custom_component.py",
    "test_pixels.py",
    "test_custom_envs.py",
    "test_networks.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
