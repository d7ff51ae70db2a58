"""Update-throughput benchmark: wm_jax's full update beside two baselines, in one run.

    python experiments/benchmarks/update_throughput.py --batch_sizes=64,256,1024 --repeats=20

Baselines (issue 18), timed round-robin with wm_jax so that load drift hits all alike:

* ``torch``: the seeds' design in PyTorch, timed with 1 and with all intra-op threads and
  compared at its faster setting (``baselines/torch_update.py``: one forward, three
  backward passes with the gradient save/restore, three Adam optimisers); needs the optional
  ``bench`` extra (``pip install -e .[bench]``) and is skipped with a message without torch;
* ``plain_jax``: the same maths as a minimal jitted JAX program with no wm_jax code
  (``baselines/plain_jax_update.py``), the floor wm_jax must never fall below.

Every variant runs in each ``--precisions`` entry (``float32``, ``bfloat16``: bf16 matmul inputs,
f32 accumulation, parameters and optimiser states; torch runs f32 only) and ratios are taken
against the same run's medians: ``ratio_vs_torch = t_torch / t_wm_jax``, ``ratio_vs_plain_jax =
t_plain / t_wm_jax`` (same precision).  The JSON last line has, per batch size,
``results["64"]["updates_per_s"]``, ``["ratio_vs_torch"]``, ``["ratio_vs_plain_jax"]`` for the
config's default precision and ``results["64"]["precisions"][p]`` for each precision.

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
4. measures a ``--matmul_n``² ``jnp.dot`` in float32 and with bf16 inputs / f32 accumulation
   (jitted; FLOPs = 2·n³) in the same run, one call of each interleaved with every round of update
   calls so all see the same machine load.

Step 2 (``--separate``) and the unrolled program's timing (``--time_unrolled``) are off by
default to keep the run short on a loaded 2-core CPU.

The variants are timed round-robin (one call of each per round) so that drifting load from
other processes on a shared machine hits all of them alike; every reported time is a median.
``achieved_flops_per_s = flops_per_update / seconds_per_update`` where ``seconds_per_update`` is the
production program (one jit, ``unroll = 1``, the config default).  ``--time_unrolled`` also times
the unrolled program (``seconds_per_update_unrolled``; a speed knob the config exposes).

Diagnostics printed per batch size: XLA's temp-buffer size and the minor page faults and system CPU
time per update.  Under glibc's defaults the temp buffer (tens to hundreds of MiB) is a fresh
``mmap`` on every call, so every update page-faults it in; like ``python -m wm_jax.train``, this
script re-executes itself once with malloc settings that keep the memory (:mod:`wm_jax._allocator`;
``WM_JAX_NO_ALLOCATOR_TUNING=1`` turns that off to see the faults).  ``XLA_FLAGS`` and
``GLIBC_TUNABLES`` are echoed in the output.

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

_HERE = os.path.dirname(os.path.abspath(__file__))
# The baselines next to this file, and the wm_jax of this checkout (not another installed copy).
sys.path[:0] = [_HERE, os.path.dirname(os.path.dirname(_HERE))]

from baselines import plain_jax_update  # noqa: E402
from common import save_result  # noqa: E402

from wm_jax import update  # noqa: E402
from wm_jax.config import get_config  # noqa: E402
from wm_jax.schedule import UpdateCounts  # noqa: E402
from wm_jax.types import Transition  # noqa: E402

_BATCH_SIZES = flags.DEFINE_string("batch_sizes", "64,256,1024", "comma-separated batch sizes")
_PRECISIONS = flags.DEFINE_string(
    "precisions", "float32,bfloat16", "comma-separated config.precision values to time"
)
_BASELINES = flags.DEFINE_bool("baselines", True, "time the torch and plain JAX baselines too")
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
_SEPARATE = flags.DEFINE_bool(
    "separate", False, "also time the update as three separately jitted calls (float32)"
)
_TIME_UNROLLED = flags.DEFINE_bool(
    "time_unrolled",
    False,
    "also time the unroll=horizon program (compiled for FLOPs anyway; off by default to keep the"
    " run short on a loaded 2-core CPU)",
)
_COMPILE_THREADS = flags.DEFINE_integer(
    "compile_threads", 1, "programs compiled concurrently (no gain measured on a loaded 2-core CPU)"
)
_TORCH_THREADS = flags.DEFINE_string(
    "torch_threads",
    "1,all",
    "comma-separated torch intra-op thread counts to time ('all': every core); the fastest is "
    "the baseline",
)
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed for parameters and the random batch")
_OVERRIDES = flags.DEFINE_multi_string(
    "override", [], "wm_jax config override x.y=value (Python literal), e.g. model.layer_norm=False"
)

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


def _config(unroll: int, precision: str):
    import ast

    config = get_config()
    config.model.feature_dim = 256
    config.model.state_dim = 64
    config.model.hidden_dim = 256
    config.imagination.horizon = _HORIZON.value
    config.imagination.unroll = unroll
    if "precision" in config:
        config.precision = precision
    elif precision != "float32":
        raise ValueError("this wm_jax has no config.precision")
    for item in _OVERRIDES.value:
        path, _, text = item.partition("=")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        node = config
        *parents, leaf = path.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
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
    """A jitted ``n × n`` matmul: float32, or (``bf16``) bf16 inputs with f32 accumulation."""

    def __init__(self, n: int, key, bf16: bool = False):
        ka, kb = jax.random.split(key)
        self.n = n
        dtype = jnp.bfloat16 if bf16 else jnp.float32
        self.a = jax.random.normal(ka, (n, n), jnp.float32).astype(dtype)
        self.b = jax.random.normal(kb, (n, n), jnp.float32).astype(dtype)
        self.fn = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
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


def _torch_available() -> str | None:
    """None if the torch baseline can run, else why not."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed (pip install -e .[bench]); skipping the torch baseline"
    return None


class _TorchVariant:
    """The torch update with ``threads`` intra-op threads (set before every call: torch's
    OpenMP pool spins, and on a loaded machine one thread can beat all cores)."""

    def __init__(self, spec, batch, threads: int):
        import torch
        from baselines.torch_update import TorchUpdate

        torch.manual_seed(_SEED.value)
        self.torch, self.threads = torch, threads
        self.model = TorchUpdate(_OBS_DIM.value, spec.action_dim, _HORIZON.value)
        self.batch = tuple(
            torch.from_numpy(np.array(x))
            for x in (batch.obs, batch.action, batch.reward, batch.next_obs, batch.cont)
        )

    def __call__(self):
        self.torch.set_num_threads(self.threads)
        self.model.step(self.batch)


class _JaxVariant:
    """A compiled ``(state, batch) -> (state, aux)`` program fed its own returned state."""

    def __init__(self, compiled, state, batch):
        self.fn, self.state, self.batch = compiled, state, batch

    def __call__(self):
        self.state, aux = self.fn(self.state, self.batch)
        jax.block_until_ready((self.state, aux))


def _bench_batch(batch_size: int, spec, counts, matmuls: dict, key) -> dict:
    horizon = _HORIZON.value
    precisions = [p for p in _PRECISIONS.value.split(",") if p]
    init_key, batch_key = jax.random.split(key)
    batch = _random_batch(spec, batch_size, batch_key)
    plain_batch = (batch.obs, batch.action, batch.reward, batch.next_obs, batch.cont)

    # ---- lower every program.  The AOT ``Compiled`` objects are also what is timed: jax's
    # call-path cache is not filled by ``.lower().compile()``, so calling the jitted functions
    # would compile every program a second time.  (A static argument, ``counts``, is baked into
    # the compiled train step and is not passed again.)
    jobs, states, separate_args = {}, {}, None
    for p in precisions:
        agent = update.make_agent(_config(1, p), spec)
        agent_unrolled = update.make_agent(_config(horizon, p), spec)
        steps, steps_unrolled = update.make_steps(agent), update.make_steps(agent_unrolled)
        state = jax.block_until_ready(steps.init(init_key))
        states[f"wm_jax/{p}"] = state
        jobs[f"wm_jax/{p}"] = steps.train_step.lower(state, batch, counts)
        jobs[f"wm_jax/{p}/unrolled"] = steps_unrolled.train_step.lower(state, batch, counts)
        if _SEPARATE.value and p == precisions[0]:
            # Concrete placeholders for the critic's imagined-trajectory input.
            _, _, imagined_abs, weights_abs = jax.tree_util.tree_map(
                lambda x: jnp.zeros(x.shape, x.dtype),
                jax.eval_shape(steps.actor_update, state, batch),
            )
            jobs["world_model"] = steps.world_model_update.lower(state, batch)
            jobs["actor"] = steps.actor_update.lower(state, batch)
            jobs["critic"] = steps.critic_update.lower(state, batch, imagined_abs, weights_abs)
            separate_args = state
        if _BASELINES.value:
            for unroll, suffix in ((1, ""), (horizon, "/unrolled")):
                init, plain = plain_jax_update.make_update(
                    _OBS_DIM.value, spec.action_dim, horizon, precision=p, unroll=unroll
                )
                pstate = init(init_key)
                states[f"plain_jax/{p}{suffix}"] = pstate
                jobs[f"plain_jax/{p}{suffix}"] = plain.lower(pstate, plain_batch)
    compiled, compile_s = _compile_all({name: (lambda low=low: low) for name, low in jobs.items()})
    flops = {name: _flops(c) for name, c in compiled.items()}

    variants = {}
    for p in precisions:
        variants[f"wm_jax/{p}"] = _JaxVariant(compiled[f"wm_jax/{p}"], states[f"wm_jax/{p}"], batch)
        if _TIME_UNROLLED.value:
            name = f"wm_jax/{p}/unrolled"
            variants[name] = _JaxVariant(compiled[name], states[f"wm_jax/{p}"], batch)
        if _BASELINES.value:
            name = f"plain_jax/{p}"
            variants[name] = _JaxVariant(compiled[name], states[name], plain_batch)
    torch_skip = _torch_available() if _BASELINES.value else "baselines off"
    torch_threads = sorted(
        {
            (os.cpu_count() or 1) if t.strip() == "all" else int(t)
            for t in _TORCH_THREADS.value.split(",")
            if t.strip()
        }
    )
    if torch_skip is None:
        for n in torch_threads:
            variants[f"torch/float32/{n}"] = _TorchVariant(spec, batch, n)

    times = {name: [] for name in variants}
    sep_names = ("world_model", "actor", "critic", "separate")
    times.update({k: [] for k in sep_names})
    sep_state = separate_args

    def separate_call(s, record):
        t0 = time.perf_counter()
        s, m_wm = compiled["world_model"](s, batch)
        jax.block_until_ready((s, m_wm))
        t1 = time.perf_counter()
        s, m_actor, imagined, weights = compiled["actor"](s, batch)
        jax.block_until_ready((s, m_actor, imagined, weights))
        t2 = time.perf_counter()
        s, m_critic = compiled["critic"](s, batch, imagined, weights)
        jax.block_until_ready((s, m_critic))
        t3 = time.perf_counter()
        if record:
            for k, dt in zip(sep_names, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                times[k].append(dt)
        return s

    for _ in range(_WARMUP.value):
        for fn in variants.values():
            fn()
        if separate_args is not None:
            sep_state = separate_call(sep_state, False)

    # ---- time: one call of every variant per round, round-robin
    faults = {name: 0.0 for name in variants}
    sys_cpu = {name: 0.0 for name in variants}
    for _ in range(_REPEATS.value):
        for name, fn in variants.items():
            usage = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_SELF)
            faults[name] += after.ru_minflt - usage.ru_minflt
            sys_cpu[name] += after.ru_stime - usage.ru_stime
        if separate_args is not None:
            sep_state = separate_call(sep_state, True)
        for matmul in matmuls.values():
            matmul.call()

    med = {k: (_median(v) if v else None) for k, v in times.items()}
    # The torch baseline is its best thread count (the conservative ratio for wm_jax).
    torch_meds = {
        n: med[f"torch/float32/{n}"] for n in torch_threads if f"torch/float32/{n}" in med
    }
    torch_best = min(torch_meds, key=torch_meds.get) if torch_meds else None
    med["torch/float32"] = None if torch_best is None else torch_meds[torch_best]
    reps = max(1, _REPEATS.value)
    per_precision = {}
    for p in precisions:
        name = f"wm_jax/{p}"
        t = med[name]
        plain_t = med.get(f"plain_jax/{p}")
        torch_t = med.get("torch/float32")
        state = variants[name].state
        finite = bool(
            all(
                np.isfinite(np.asarray(leaf)).all()
                for leaf in jax.tree_util.tree_leaves((state.wm_params, state.actor_params))
            )
        )
        per_precision[p] = {
            "seconds_per_update": t,
            "updates_per_s": 1.0 / t,
            "ratio_vs_torch": None if torch_t is None else torch_t / t,
            "ratio_vs_plain_jax": None if plain_t is None else plain_t / t,
            "plain_jax_updates_per_s": None if plain_t is None else 1.0 / plain_t,
            "flops_per_update": flops[f"{name}/unrolled"],
            "flops_scanned": flops[name],
            "plain_jax_flops_per_update": flops.get(f"plain_jax/{p}/unrolled"),
            "seconds_per_update_unrolled": med.get(f"{name}/unrolled"),
            "temp_bytes": _temp_bytes(compiled[name]),
            "plain_jax_temp_bytes": _temp_bytes(compiled[f"plain_jax/{p}"])
            if f"plain_jax/{p}" in compiled
            else None,
            "minor_faults_per_update": faults[name] / reps,
            "sys_cpu_s_per_update": sys_cpu[name] / reps,
            "compile_seconds": round(compile_s[name], 1),
            "params_finite_after_run": finite,
        }
    default_precision = get_config().get("precision", "float32")
    try:  # "auto" is float32 or bfloat16 by the machine (wm_jax.networks.common)
        from wm_jax.networks.common import resolve_precision

        default_precision = resolve_precision(default_precision)
    except ImportError:
        pass
    default = per_precision.get(default_precision, per_precision[precisions[0]])
    step_flops = {"world_model": None, "actor": None, "critic": None}
    if separate_args is not None:
        f32 = f"wm_jax/{precisions[0]}"
        step_flops = {k: flops[k] for k in ("world_model", "actor", "critic")}
        if None not in (flops[f"{f32}/unrolled"], flops[f32], flops["actor"]):
            # Unrolling only adds the (H - 1) imagination steps the scanned count misses, all in
            # the actor; the full program may share a little work between steps (CSE).
            step_flops["actor"] = flops[f"{f32}/unrolled"] - flops[f32] + flops["actor"]
    return {
        "batch_size": batch_size,
        "default_precision": default_precision,
        **default,
        "torch_updates_per_s": None
        if med.get("torch/float32") is None
        else 1 / med["torch/float32"],
        "torch_skipped": torch_skip,
        "torch_threads": torch_best,
        "torch_seconds_by_threads": {str(n): t for n, t in torch_meds.items()},
        "precisions": per_precision,
        "seconds_per_update_separate": med["separate"],
        "step_seconds": {k: med[k] for k in ("world_model", "actor", "critic")},
        "step_flops": step_flops,
    }


def _fmt_s(x):
    return "-" if x is None else f"{x * 1e3:9.1f} ms"


def _fmt_g(x):
    return "-" if x is None else f"{x / 1e9:8.2f} G"


def _fmt_pct(x):
    return "-" if x is None else f"{100 * x:5.1f} %"


def _fmt_x(x):
    return "-" if x is None else f"{x:5.2f}x"


def main(argv):
    del argv
    allocator = "unknown"  # an older wm_jax (PYTHONPATH) may not describe it
    try:  # the allocator fix for XLA's temp buffer, if this wm_jax has it (re-execs at most once)
        from wm_jax import _allocator

        _allocator.tune()
        allocator = getattr(_allocator, "describe", lambda: allocator)()
    except ImportError:
        pass
    wall_start = time.perf_counter()
    batch_sizes = [int(b) for b in _BATCH_SIZES.value.split(",") if b.strip()]
    spec = _spec()
    counts = UpdateCounts(1, 1, 1)
    device = jax.devices()[0]
    key = jax.random.PRNGKey(_SEED.value)
    mm_key, run_key = jax.random.split(key)

    # timed once each per round of update calls
    matmuls = {"float32": _Matmul(_MATMUL_N.value, mm_key)}
    matmuls["bfloat16"] = _Matmul(_MATMUL_N.value, mm_key, bf16=True)
    for matmul in matmuls.values():
        for _ in range(_WARMUP.value):
            matmul.call()
        matmul.times.clear()

    results = []
    for i, batch_size in enumerate(batch_sizes):
        print(f"[batch {batch_size}] compiling and timing ...", flush=True)
        results.append(
            _bench_batch(batch_size, spec, counts, matmuls, jax.random.fold_in(run_key, i))
        )
    if results and results[0]["torch_skipped"]:
        print(results[0]["torch_skipped"])

    matmul_rate = matmuls["float32"].rate()
    bf16_rate = matmuls["bfloat16"].rate()
    for r in results:
        for entry in (r, *r["precisions"].values()):
            achieved = (
                None
                if entry["flops_per_update"] is None
                else entry["flops_per_update"] / entry["seconds_per_update"]
            )
            entry["achieved_flops_per_s"] = achieved
            entry["fraction_of_matmul"] = None if achieved is None else achieved / matmul_rate
            entry["fraction_of_bf16_matmul"] = None if achieved is None else achieved / bf16_rate
        target = TARGETS.get(r["batch_size"])
        r["target_fraction"] = target
        r["target_met"] = (
            None
            if target is None or r["fraction_of_matmul"] is None
            else bool(r["fraction_of_matmul"] >= target)
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
        f"features 256, states 64, hidden 256, H {_HORIZON.value}; UpdateCounts(1, 1, 1); "
        f"overrides {_OVERRIDES.value}"
    )
    print(
        f"matmul {_MATMUL_N.value}² : f32 {matmul_rate / 1e9:.1f} GFLOP/s, bf16 inputs / f32 "
        f"accumulation {bf16_rate / 1e9:.1f} GFLOP/s (medians, interleaved with the update rounds)"
    )
    print(
        "FLOPs used: XLA cost_analysis of the program lowered with imagination.unroll = H "
        "(every imagination step counted); 'scanned' = unroll 1, loop body counted once."
    )
    print(f"repeats {_REPEATS.value}, warmup {_WARMUP.value}; times are medians.")
    print(
        f"env: XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r} "
        f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', '')!r}"
    )
    print()
    header = (
        f"{'batch':>6} | {'precision':>9} | {'s/update':>12} | {'updates/s':>9} | "
        f"{'vs torch':>8} | {'vs plain':>8} | {'FLOPs/upd':>10} | {'GFLOP/s':>8} | "
        f"{'of f32 mm':>9} | {'of bf16 mm':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        for p, e in r["precisions"].items():
            achieved = e["achieved_flops_per_s"]
            print(
                f"{r['batch_size']:>6} | {p:>9} | {_fmt_s(e['seconds_per_update']):>12} | "
                f"{e['updates_per_s']:9.2f} | {_fmt_x(e['ratio_vs_torch']):>8} | "
                f"{_fmt_x(e['ratio_vs_plain_jax']):>8} | {_fmt_g(e['flops_per_update']):>10} | "
                f"{'-' if achieved is None else f'{achieved / 1e9:8.2f}':>8} | "
                f"{_fmt_pct(e['fraction_of_matmul']):>9} | "
                f"{_fmt_pct(e['fraction_of_bf16_matmul']):>10}"
            )
    print()
    print("baselines, updates/s: torch (f32) and plain JAX per precision")
    for r in results:
        plain = {
            p: (
                None
                if e["plain_jax_updates_per_s"] is None
                else round(e["plain_jax_updates_per_s"], 2)
            )
            for p, e in r["precisions"].items()
        }
        torch_ups = r["torch_updates_per_s"]
        print(
            f"  batch {r['batch_size']}: torch "
            f"{'-' if torch_ups is None else f'{torch_ups:.2f}'} (best of threads: s/update "
            f"{r['torch_seconds_by_threads']}), plain JAX {plain}"
        )
    if _SEPARATE.value:
        print()
        print("per-update seconds: three separate jitted calls (blocked after each; sum, steps)")
        for r in results:
            st = r["step_seconds"]
            print(
                f"  batch {r['batch_size']}: {_fmt_s(r['seconds_per_update_separate'])}; "
                f"wm {_fmt_s(st['world_model'])}, actor {_fmt_s(st['actor'])}, "
                f"critic {_fmt_s(st['critic'])}"
            )
    print()
    print("one-jit program, per update: XLA temp buffer, minor page faults, system CPU time")
    for r in results:
        for p, e in r["precisions"].items():
            temp = e["temp_bytes"]
            temp_s = "-" if temp is None else f"{temp / 2**20:.0f} MiB"
            ptemp = e["plain_jax_temp_bytes"]
            ptemp_s = "-" if ptemp is None else f"{ptemp / 2**20:.0f} MiB"
            print(
                f"  batch {r['batch_size']} {p}: temp {temp_s} (plain JAX {ptemp_s}), "
                f"{e['minor_faults_per_update']:.0f} minor faults, "
                f"sys {1e3 * e['sys_cpu_s_per_update']:.0f} ms "
                f"(wall {1e3 * e['seconds_per_update']:.0f} ms), compile {e['compile_seconds']} s,"
                f" params finite: {e['params_finite_after_run']}"
            )
    print(f"total wall time {time.perf_counter() - wall_start:.0f} s")

    keys = (
        "seconds_per_update",
        "updates_per_s",
        "ratio_vs_torch",
        "ratio_vs_plain_jax",
        "plain_jax_updates_per_s",
        "flops_per_update",
        "flops_scanned",
        "plain_jax_flops_per_update",
        "achieved_flops_per_s",
        "fraction_of_matmul",
        "fraction_of_bf16_matmul",
        "seconds_per_update_unrolled",
        "temp_bytes",
        "plain_jax_temp_bytes",
        "minor_faults_per_update",
        "sys_cpu_s_per_update",
    )
    summary = {
        "benchmark": "update_throughput",
        "device": f"{device.platform}:{device.device_kind}",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "allocator": allocator,
        "jax_version": jax.__version__,
        "matmul_n": _MATMUL_N.value,
        "matmul_flops_per_s": matmul_rate,
        "matmul_bf16_flops_per_s": bf16_rate,
        "flops_counted_on": "unroll=horizon (flops_per_update); flops_scanned is unroll=1",
        "horizon": _HORIZON.value,
        "repeats": _REPEATS.value,
        "warmup": _WARMUP.value,
        "overrides": _OVERRIDES.value,
        "spec": {
            "obs_shape": list(spec.obs_shape),
            "action_dim": spec.action_dim,
            "discrete": spec.discrete,
        },
        "targets": {str(k): v for k, v in TARGETS.items()},
        "results": {
            str(r["batch_size"]): {
                **{k: r[k] for k in keys},
                "torch_updates_per_s": r["torch_updates_per_s"],
                "torch_threads": r["torch_threads"],
                "torch_seconds_by_threads": r["torch_seconds_by_threads"],
                "target_fraction": r["target_fraction"],
                "target_met": r["target_met"],
                "seconds_per_update_separate": r["seconds_per_update_separate"],
                "step_seconds": r["step_seconds"],
                "precisions": {p: {k: e[k] for k in keys} for p, e in r["precisions"].items()},
            }
            for r in results
        },
    }
    save_result("update_throughput", summary)
    print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
