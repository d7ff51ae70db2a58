"""Update-throughput benchmark: seconds per full update and the fraction of a matmul's FLOP/s.

    python experiments/benchmarks/update_throughput.py --batch_sizes=64,1024 --repeats=20

At the seeds' sizes (features 256, states 64, hidden 256, H = 15; by default a 1-D continuous
action and 3-D observations, a flat :class:`wm_jax.types.Transition` batch) and for each batch size:

1. times one FULL update, ``train_step`` with ``UpdateCounts(1, 1, 1)`` (world model + actor +
   critic) jitted once through :func:`wm_jax.update.make_steps`, feeding the returned state back in
   so the calls form a real training sequence;
2. times the same update as three separately jitted calls (``world_model_update``,
   ``actor_update``, ``critic_update``), each blocked on, so the per-step times come out too;
3. counts the FLOPs of one full update with XLA's ``cost_analysis()``.  XLA counts a while-loop
   (``lax.scan``) body ONCE, so the count that is used (``flops_per_update``) comes from a program
   lowered with ``config.imagination.unroll = horizon`` (the same maths, every imagination step
   visible); the count of the scanned (``unroll = 1``) program is reported beside it.  The small
   ``lax.scan`` of the λ-returns is still counted once; its elementwise FLOPs are negligible;
4. measures a ``--matmul_n``² float32 ``jnp.dot`` (jitted; FLOPs = 2·n³) in the same run, one
   call interleaved with every round of update calls so both see the same machine load.

The variants are timed round-robin (one call of each per round) so that drifting load from
other processes on a shared machine hits all of them alike; every reported time is a median.
``achieved_flops_per_s = flops_per_update / seconds_per_update`` where ``seconds_per_update`` is the
production program (one jit, ``unroll = 1``, the config default).  ``--time_unrolled`` also times
the unrolled program (``seconds_per_update_unrolled``; a speed knob the config exposes).

Diagnostics printed per batch size: XLA's temp-buffer size and the minor page faults and system CPU
time per update.  On this glibc machine the temp buffer (tens to hundreds of MiB) is a fresh
``mmap`` on every call, so every update page-faults it in; running with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (transparent huge pages for malloc's mmaps) removes
almost all of those faults.  ``XLA_FLAGS`` and ``GLIBC_TUNABLES`` are echoed in the output.

Targets set by the project (reported, not enforced): at least 30 % of the matmul rate at batch 1024
and at least 15 % at batch 64 on CPU.  The last line of output is one JSON object.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import platform
import resource
import statistics
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from wm_jax import update
from wm_jax.config import get_config
from wm_jax.schedule import UpdateCounts
from wm_jax.types import Transition

_BATCH_SIZES = flags.DEFINE_string("batch_sizes", "64,1024", "comma-separated batch sizes")
_REPEATS = flags.DEFINE_integer("repeats", 20, "timed calls per variant (medians are reported)")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untimed calls per variant after compilation")
_HORIZON = flags.DEFINE_integer("horizon", 15, "imagination horizon H")
_DISCRETE = flags.DEFINE_bool(
    "discrete", False, "discrete (one-hot) actions; default 1-D continuous"
)
_ACTION_DIM = flags.DEFINE_integer(
    "action_dim", None, "action dimension (default: 1 continuous, 2 discrete choices)"
)
_OBS_DIM = flags.DEFINE_integer("obs_dim", 3, "observation dimension (flat float observations)")
_MATMUL_N = flags.DEFINE_integer("matmul_n", 2048, "size of the reference square matmul")
_TIME_UNROLLED = flags.DEFINE_bool(
    "time_unrolled",
    False,
    "also time the unroll=horizon program (compiled for FLOPs anyway; off by default to keep the"
    " run near 5 minutes on a loaded 2-core CPU)",
)
_COMPILE_THREADS = flags.DEFINE_integer(
    "compile_threads", 1, "programs compiled concurrently (no gain measured on a loaded 2-core CPU)"
)
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed for parameters and the random batch")

TARGETS = {64: 0.15, 1024: 0.30}  # fraction of the matmul rate the project asks for


def _median(values):
    return float(statistics.median(values))


def _flops(compiled) -> float | None:
    """FLOPs from ``Compiled.cost_analysis()``: a dict in recent jax, a list of dicts (one per
    program; one entry here, a single device) in older ones, or None where unsupported."""
    cost = compiled.cost_analysis()
    if cost is None:
        return None
    if isinstance(cost, (list, tuple)):
        if not cost:
            return None
        cost = cost[0]
    value = cost.get("flops")
    return None if value is None else float(value)


def _temp_bytes(compiled) -> int | None:
    try:
        return int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - memory_analysis is optional across backends/versions
        return None


def _spec():
    action_dim = _ACTION_DIM.value or (2 if _DISCRETE.value else 1)
    return types.SimpleNamespace(
        obs_shape=(_OBS_DIM.value,),
        obs_dtype=np.float32,
        action_dim=action_dim,
        discrete=_DISCRETE.value,
    )


def _config(unroll: int):
    config = get_config()
    config.model.feature_dim = 256
    config.model.state_dim = 64
    config.model.hidden_dim = 256
    config.imagination.horizon = _HORIZON.value
    config.imagination.unroll = unroll
    return config


def _random_batch(spec, batch_size: int, key) -> Transition:
    k_obs, k_act, k_rew, k_next, k_cont = jax.random.split(key, 5)
    obs_shape = (batch_size, *spec.obs_shape)
    if spec.discrete:
        idx = jax.random.randint(k_act, (batch_size,), 0, spec.action_dim)
        action = jax.nn.one_hot(idx, spec.action_dim, dtype=jnp.float32)
    else:
        action = jax.random.uniform(k_act, (batch_size, spec.action_dim), jnp.float32, -1.0, 1.0)
    batch = Transition(
        obs=jax.random.normal(k_obs, obs_shape, jnp.float32),
        action=action,
        reward=jax.random.normal(k_rew, (batch_size,), jnp.float32),
        next_obs=jax.random.normal(k_next, obs_shape, jnp.float32),
        cont=jax.random.bernoulli(k_cont, 0.95, (batch_size,)).astype(jnp.float32),
        mask=jnp.ones((batch_size,), jnp.float32),
    )
    return jax.block_until_ready(jax.device_put(batch, jax.devices()[0]))


def _compile_all(jobs: dict) -> tuple[dict, dict]:
    """``jobs``: name -> zero-argument function returning a ``Lowered``.  Compiles them
    (``--compile_threads`` at a time); returns (name -> Compiled, name -> seconds)."""
    compiled, seconds = {}, {}

    def run(name):
        start = time.perf_counter()
        result = jobs[name]().compile()
        return name, result, time.perf_counter() - start

    with concurrent.futures.ThreadPoolExecutor(max(1, _COMPILE_THREADS.value)) as pool:
        for name, result, took in pool.map(run, list(jobs)):
            compiled[name], seconds[name] = result, took
    return compiled, seconds


class _Matmul:
    def __init__(self, n: int, key):
        ka, kb = jax.random.split(key)
        self.n = n
        self.a = jax.random.normal(ka, (n, n), jnp.float32)
        self.b = jax.random.normal(kb, (n, n), jnp.float32)
        self.fn = jax.jit(jnp.dot)
        jax.block_until_ready(self.fn(self.a, self.b))
        self.times: list[float] = []

    def call(self) -> None:
        start = time.perf_counter()
        jax.block_until_ready(self.fn(self.a, self.b))
        self.times.append(time.perf_counter() - start)

    @property
    def flops(self) -> float:
        return 2.0 * self.n**3

    def rate(self) -> float:
        return self.flops / _median(self.times)


def _bench_batch(batch_size: int, spec, counts, matmul: _Matmul, key) -> dict:
    horizon = _HORIZON.value
    agent = update.make_agent(_config(unroll=1), spec)
    agent_unrolled = update.make_agent(_config(unroll=horizon), spec)
    steps = update.make_steps(agent)
    steps_unrolled = update.make_steps(agent_unrolled)
    init_key, batch_key = jax.random.split(key)
    state = jax.block_until_ready(steps.init(init_key))
    batch = _random_batch(spec, batch_size, batch_key)
    # Concrete placeholders for the critic's imagined-trajectory input.
    _, _, imagined_abs, weights_abs = jax.tree_util.tree_map(
        lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(steps.actor_update, state, batch)
    )

    # ---- compile once per program.  The AOT ``Compiled`` objects are also what is timed: jax's
    # call-path cache is not filled by ``.lower().compile()``, so calling the jitted functions
    # would compile every program a second time.  (A static argument, ``counts``, is baked into
    # the compiled train step and is not passed again.)
    jobs = {
        "full": lambda: steps.train_step.lower(state, batch, counts),
        "full_unrolled": lambda: steps_unrolled.train_step.lower(state, batch, counts),
        "world_model": lambda: steps.world_model_update.lower(state, batch),
        "actor": lambda: steps.actor_update.lower(state, batch),
        "critic": lambda: steps.critic_update.lower(state, batch, imagined_abs, weights_abs),
    }
    # Lowering traces Python (GIL-bound); do it serially, then compile.
    lowered = {name: job() for name, job in jobs.items()}
    compiled, compile_s = _compile_all(
        {name: (lambda low=low: low) for name, low in lowered.items()}
    )
    flops = {name: _flops(c) for name, c in compiled.items()}
    train_step, train_step_unrolled = compiled["full"], compiled["full_unrolled"]
    wm_step, actor_step, critic_step = (
        compiled["world_model"],
        compiled["actor"],
        compiled["critic"],
    )

    # ---- time: one call of every variant per round, round-robin
    def full_call(s, step_fn):
        s, metrics = step_fn(s, batch)
        jax.block_until_ready((s, metrics))
        return s

    def separate_call(s, times):
        t0 = time.perf_counter()
        s, m_wm = wm_step(s, batch)
        jax.block_until_ready((s, m_wm))
        t1 = time.perf_counter()
        s, m_actor, imagined, weights = actor_step(s, batch)
        jax.block_until_ready((s, m_actor, imagined, weights))
        t2 = time.perf_counter()
        s, m_critic = critic_step(s, batch, imagined, weights)
        jax.block_until_ready((s, m_critic))
        t3 = time.perf_counter()
        if times is not None:
            times["world_model"].append(t1 - t0)
            times["actor"].append(t2 - t1)
            times["critic"].append(t3 - t2)
            times["separate"].append(t3 - t0)
        return s

    s_full = s_unrolled = s_sep = state
    for _ in range(_WARMUP.value):
        s_full = full_call(s_full, train_step)
        if _TIME_UNROLLED.value:
            s_unrolled = full_call(s_unrolled, train_step_unrolled)
        s_sep = separate_call(s_sep, None)

    times = {k: [] for k in ("full", "full_unrolled", "world_model", "actor", "critic", "separate")}
    faults = sys_cpu = 0.0
    for _ in range(_REPEATS.value):
        usage = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        s_full = full_call(s_full, train_step)
        times["full"].append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        faults += after.ru_minflt - usage.ru_minflt
        sys_cpu += after.ru_stime - usage.ru_stime
        if _TIME_UNROLLED.value:
            start = time.perf_counter()
            s_unrolled = full_call(s_unrolled, train_step_unrolled)
            times["full_unrolled"].append(time.perf_counter() - start)
        s_sep = separate_call(s_sep, times)
        matmul.call()

    finite = bool(
        all(
            np.isfinite(np.asarray(leaf)).all()
            for leaf in jax.tree_util.tree_leaves((s_full.wm_params, s_full.actor_params))
        )
    )
    med = {k: (_median(v) if v else None) for k, v in times.items()}
    actor_flops_unrolled = None
    if None not in (flops["full_unrolled"], flops["full"], flops["actor"]):
        # Unrolling only adds the (H - 1) imagination steps the scanned count misses, all in the
        # actor; the full program may share a little work between steps (CSE), hence this form.
        actor_flops_unrolled = flops["full_unrolled"] - flops["full"] + flops["actor"]
    step_flops = {
        "world_model": flops["world_model"],
        "actor": actor_flops_unrolled,
        "critic": flops["critic"],
    }
    return {
        "batch_size": batch_size,
        "seconds_per_update": med["full"],
        "updates_per_s": 1.0 / med["full"],
        "flops_per_update": flops["full_unrolled"],
        "flops_scanned": flops["full"],
        "seconds_per_update_unrolled": med["full_unrolled"],
        "seconds_per_update_separate": med["separate"],
        "step_seconds": {k: med[k] for k in ("world_model", "actor", "critic")},
        "step_flops": step_flops,
        "step_flops_scanned": {k: flops[k] for k in ("world_model", "actor", "critic")},
        "compile_seconds": {k: round(v, 1) for k, v in compile_s.items()},
        # Diagnostics of the one-jit program: XLA's temp buffer is freshly mapped on every call,
        # so each call page-faults it in (see the module docstring).
        "temp_bytes": _temp_bytes(train_step),
        "minor_faults_per_update": faults / max(1, _REPEATS.value),
        "sys_cpu_s_per_update": sys_cpu / max(1, _REPEATS.value),
        "params_finite_after_run": finite,
    }


def _fmt_s(x):
    return "-" if x is None else f"{x * 1e3:9.1f} ms"


def _fmt_g(x):
    return "-" if x is None else f"{x / 1e9:8.2f} G"


def _fmt_pct(x):
    return "-" if x is None else f"{100 * x:5.1f} %"


def main(argv):
    del argv
    wall_start = time.perf_counter()
    batch_sizes = [int(b) for b in _BATCH_SIZES.value.split(",") if b.strip()]
    spec = _spec()
    counts = UpdateCounts(1, 1, 1)
    device = jax.devices()[0]
    key = jax.random.PRNGKey(_SEED.value)
    mm_key, run_key = jax.random.split(key)

    matmul = _Matmul(_MATMUL_N.value, mm_key)  # timed once per round of update calls
    for _ in range(_WARMUP.value):
        matmul.call()
    matmul.times.clear()

    results = []
    for i, batch_size in enumerate(batch_sizes):
        print(f"[batch {batch_size}] compiling and timing ...", flush=True)
        results.append(
            _bench_batch(batch_size, spec, counts, matmul, jax.random.fold_in(run_key, i))
        )

    matmul_rate = matmul.rate()
    for r in results:
        r["achieved_flops_per_s"] = (
            None
            if r["flops_per_update"] is None
            else r["flops_per_update"] / r["seconds_per_update"]
        )
        r["fraction_of_matmul"] = (
            None if r["achieved_flops_per_s"] is None else r["achieved_flops_per_s"] / matmul_rate
        )
        r["step_fraction_of_matmul"] = {
            k: (None if r["step_flops"][k] is None else r["step_flops"][k] / t / matmul_rate)
            for k, t in r["step_seconds"].items()
        }
        target = TARGETS.get(r["batch_size"])
        r["target_fraction"] = target
        r["target_met"] = (
            None
            if target is None or r["fraction_of_matmul"] is None
            else bool(r["fraction_of_matmul"] >= target)
        )
        r["faster"] = (
            "one_jit" if r["seconds_per_update"] <= r["seconds_per_update_separate"] else "separate"
        )

    # ---- human-readable table
    print()
    cpu = platform.processor() or platform.machine()
    print(
        f"device: {device.platform} / {device.device_kind} ({cpu}),"
        f" jax {jax.__version__}, python {sys.version.split()[0]}"
    )
    print(
        f"spec: obs {spec.obs_shape}, action_dim {spec.action_dim}, discrete {spec.discrete}; "
        f"features 256, states 64, hidden 256, H {_HORIZON.value}; UpdateCounts(1, 1, 1)"
    )
    print(
        f"matmul {matmul.n}x{matmul.n} f32: {matmul_rate / 1e9:.1f} GFLOP/s "
        f"(median of {len(matmul.times)} calls, interleaved with the update rounds)"
    )
    print(
        "FLOPs used: XLA cost_analysis of the program lowered with imagination.unroll = H "
        "(every imagination step counted); 'scanned' = unroll 1, loop body counted once."
    )
    print(f"repeats {_REPEATS.value}, warmup {_WARMUP.value}; times are medians.")
    print(
        f"env: XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}"
    )
    print()
    header = (
        f"{'batch':>6} | {'s/update':>12} | {'updates/s':>9} | {'FLOPs/upd':>10} | "
        f"{'(scanned)':>10} | {'GFLOP/s':>8} | {'of matmul':>9} | {'target':>7} | met"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        achieved = r["achieved_flops_per_s"]
        print(
            f"{r['batch_size']:>6} | {_fmt_s(r['seconds_per_update']):>12} | "
            f"{r['updates_per_s']:9.2f} | {_fmt_g(r['flops_per_update']):>10} | "
            f"{_fmt_g(r['flops_scanned']):>10} | "
            f"{'-' if achieved is None else f'{achieved / 1e9:8.2f}':>8} | "
            f"{_fmt_pct(r['fraction_of_matmul']):>9} | "
            f"{_fmt_pct(r['target_fraction']):>7} | "
            f"{'-' if r['target_met'] is None else ('yes' if r['target_met'] else 'NO')}"
        )
    print()
    header = (
        f"{'batch':>6} | {'one jit':>12} | {'3 jits':>12} | {'faster':>8} | "
        f"{'unroll=H':>12} | {'wm':>12} | {'actor':>12} | {'critic':>12}"
    )
    print(
        "per-update seconds: one jit (train_step) vs three separate jitted calls "
        "(blocked after each; their sum); one jit with unroll=H; per-step times"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        st = r["step_seconds"]
        print(
            f"{r['batch_size']:>6} | {_fmt_s(r['seconds_per_update']):>12} | "
            f"{_fmt_s(r['seconds_per_update_separate']):>12} | {r['faster']:>8} | "
            f"{_fmt_s(r['seconds_per_update_unrolled']):>12} | {_fmt_s(st['world_model']):>12} | "
            f"{_fmt_s(st['actor']):>12} | {_fmt_s(st['critic']):>12}"
        )
    print()
    print(
        "per-step FLOPs (actor: unrolled count = full_unrolled - full_scanned + actor_scanned) "
        "and fraction of matmul"
    )
    header = f"{'batch':>6} | {'step':>12} | {'FLOPs':>10} | {'GFLOP/s':>8} | {'of matmul':>9}"
    print(header)
    print("-" * len(header))
    for r in results:
        for k in ("world_model", "actor", "critic"):
            f, t = r["step_flops"][k], r["step_seconds"][k]
            print(
                f"{r['batch_size']:>6} | {k:>12} | {_fmt_g(f):>10} | "
                f"{'-' if f is None else f'{f / t / 1e9:8.2f}':>8} | "
                f"{_fmt_pct(r['step_fraction_of_matmul'][k]):>9}"
            )
    print()
    print("one-jit program, per update: XLA temp buffer, minor page faults, system CPU time")
    for r in results:
        temp = r["temp_bytes"]
        temp_s = "-" if temp is None else f"{temp / 2**20:.0f} MiB"
        print(
            f"  batch {r['batch_size']}: temp {temp_s}, "
            f"{r['minor_faults_per_update']:.0f} minor faults, "
            f"sys {1e3 * r['sys_cpu_s_per_update']:.0f} ms "
            f"(wall {1e3 * r['seconds_per_update']:.0f} ms)"
        )
    for r in results:
        print(
            f"batch {r['batch_size']}: compile seconds {r['compile_seconds']}, "
            f"params finite after run: {r['params_finite_after_run']}"
        )
    print(f"total wall time {time.perf_counter() - wall_start:.0f} s")

    summary = {
        "benchmark": "update_throughput",
        "device": f"{device.platform}:{device.device_kind}",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "jax_version": jax.__version__,
        "matmul_n": matmul.n,
        "matmul_flops_per_s": matmul_rate,
        "flops_counted_on": "unroll=horizon (flops_per_update); flops_scanned is unroll=1",
        "horizon": _HORIZON.value,
        "repeats": _REPEATS.value,
        "warmup": _WARMUP.value,
        "spec": {
            "obs_shape": list(spec.obs_shape),
            "action_dim": spec.action_dim,
            "discrete": spec.discrete,
        },
        "targets": {str(k): v for k, v in TARGETS.items()},
        "results": {
            str(r["batch_size"]): {
                k: r[k]
                for k in (
                    "seconds_per_update",
                    "updates_per_s",
                    "flops_per_update",
                    "flops_scanned",
                    "achieved_flops_per_s",
                    "fraction_of_matmul",
                    "target_fraction",
                    "target_met",
                    "seconds_per_update_separate",
                    "faster",
                    "seconds_per_update_unrolled",
                    "step_seconds",
                    "step_flops",
                    "step_fraction_of_matmul",
                    "temp_bytes",
                    "minor_faults_per_update",
                    "sys_cpu_s_per_update",
                )
            }
            for r in results
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
