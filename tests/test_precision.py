"""config.precision = "bfloat16": the update's MLP matmuls take bf16 inputs (f32 accumulation)
while parameters, optimiser states, losses and metrics stay f32, and one train step on a fixed
batch gives losses within a tolerance of float32's."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_spec, random_transitions, small_config

from wm_jax.config import ConfigError, validate
from wm_jax.schedule import UpdateCounts
from wm_jax.update import init_state, make_agent, train_step

COUNTS = UpdateCounts(1, 1, 1)
LOSSES = ("world_model_loss", "decoder_loss", "representation_loss", "actor_loss", "critic_loss")


def test_precision_is_validated():
    with pytest.raises(ConfigError, match="precision"):
        validate(small_config(precision="float16"))


@pytest.mark.slow  # compiles the train step twice (bf16, f32)
def test_bfloat16_train_step_matches_float32_on_a_fixed_batch():
    spec = make_spec(obs_shape=(3,), action_dim=1, discrete=False)
    agents = {p: make_agent(small_config(precision=p), spec) for p in ("float32", "bfloat16")}
    state = init_state(agents["float32"], jax.random.PRNGKey(0))
    batch = random_transitions(jax.random.PRNGKey(1), spec)
    steps = {p: jax.jit(functools.partial(train_step, a, counts=COUNTS)) for p, a in agents.items()}
    # A few steps so the value head is no longer zero; both runs start from the same state.
    for _ in range(3):
        state, _ = steps["float32"](state, batch)

    hlo = {p: f.lower(state, batch).as_text() for p, f in steps.items()}
    assert "bf16" in hlo["bfloat16"] and "bf16" not in hlo["float32"]

    out = {p: f(state, batch) for p, f in steps.items()}
    new32, m32 = out["float32"]
    new16, m16 = out["bfloat16"]
    for leaf in jax.tree.leaves((new16.wm_params, new16.wm_opt_state, new16.critic_params)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32
    for name in LOSSES:
        assert m16[name].dtype == jnp.float32
        np.testing.assert_allclose(float(m16[name]), float(m32[name]), rtol=0.05, atol=0.02)
    # The updates agree too (Adam's first steps are sign-like, so compare the moved params).
    leaves = (jax.tree.leaves(new16.actor_params), jax.tree.leaves(new32.actor_params))
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0.05, atol=2e-3)


def test_bf16_matmul_gradients_follow_float32():
    from wm_jax.networks.common import bf16_matmul

    kx, kk, kc = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (3, 5, 16))
    kernel = jax.random.normal(kk, (16, 8)) / 4
    cot = jax.random.normal(kc, (3, 5, 8))

    def loss(f):
        return lambda x, k: jnp.sum(f(x, k) * cot)

    got = jax.grad(loss(bf16_matmul), argnums=(0, 1))(x, kernel)
    want = jax.grad(loss(jnp.matmul), argnums=(0, 1))(x, kernel)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype == jnp.float32
        np.testing.assert_allclose(g, w, rtol=0.03, atol=0.03 * float(jnp.abs(w).max()))
    # Every matmul of the backward pass takes bf16 operands too.
    hlo = jax.jit(jax.grad(loss(bf16_matmul), argnums=(0, 1))).lower(x, kernel).as_text()
    dots = [line for line in hlo.splitlines() if "dot_general" in line]
    assert len(dots) >= 2 and all("bf16" in line for line in dots)


def test_auto_precision_is_bfloat16_only_where_bf16_is_native(monkeypatch):
    from wm_jax.networks import common

    validate(small_config(precision="auto"))
    for reason, expected in (("CPU with amx_bf16", "bfloat16"), (None, "float32")):
        monkeypatch.setattr(common, "native_bf16", lambda r=reason: r)
        assert common.resolve_precision("auto") == expected
        assert common.resolve_precision("float32") == "float32"
        assert common.resolve_precision("bfloat16") == "bfloat16"
        assert common.describe_precision("auto").startswith(expected)
        # The traced update follows the resolution: bf16 dots only where it says bfloat16.
        spec = make_spec(obs_shape=(3,), action_dim=1, discrete=False)
        agent = make_agent(small_config(precision="auto"), spec)
        state = init_state(agent, jax.random.PRNGKey(0))
        batch = random_transitions(jax.random.PRNGKey(1), spec)
        step = jax.jit(functools.partial(train_step, agent, counts=COUNTS))
        assert ("bf16" in step.lower(state, batch).as_text()) == (expected == "bfloat16")


def test_native_bf16_reads_the_cpu_flags():
    from wm_jax.networks import common

    if jax.default_backend() != "cpu":
        pytest.skip("reads /proc/cpuinfo only on the CPU backend")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    common.native_bf16.cache_clear()
    try:
        native = common.native_bf16()
    finally:
        common.native_bf16.cache_clear()
    has = any(f in flags.split() for f in ("amx_bf16", "avx512_bf16"))
    assert (native is not None) == has
