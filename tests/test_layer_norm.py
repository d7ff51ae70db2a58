"""The fused LayerNorm + activation (wm_jax.networks.common.layer_norm_act, a custom VJP that
recomputes its statistics in the backward pass) equals flax's LayerNorm followed by the
activation under autodiff: values, gradients, and the parameter tree."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wm_jax.networks.common import ACTIVATIONS, MLP, LayerNorm, layer_norm_act


def _reference(x, scale, bias, act):
    ln = nn.LayerNorm()
    return act(ln.apply({"params": {"scale": scale, "bias": bias}}, x))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("shape", [(7, 16), (3, 5, 16)])
def test_custom_vjp_matches_autodiff(name, shape):
    act = ACTIVATIONS[name]
    kx, ks, kb, kg = jax.random.split(jax.random.PRNGKey(len(shape)), 4)
    x = 3.0 * jax.random.normal(kx, shape) + 1.0
    scale = 1.0 + 0.3 * jax.random.normal(ks, (16,))
    bias = 0.2 * jax.random.normal(kb, (16,))
    cot = jax.random.normal(kg, shape)

    def loss(f):
        return lambda x, s, b: jnp.sum(f(x, s, b) * cot)

    fused = lambda x, s, b: layer_norm_act(x, s, b, act)  # noqa: E731
    ref = lambda x, s, b: _reference(x, s, b, act)  # noqa: E731
    np.testing.assert_allclose(fused(x, scale, bias), ref(x, scale, bias), rtol=1e-5, atol=1e-5)
    got = jax.grad(loss(fused), argnums=(0, 1, 2))(x, scale, bias)
    want = jax.grad(loss(ref), argnums=(0, 1, 2))(x, scale, bias)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    # Second order is not needed by the update; first order under jit and vmap is.
    jit_got = jax.jit(jax.grad(loss(fused), argnums=(0, 1, 2)))(x, scale, bias)
    for g, w in zip(jit_got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_mlp_parameter_tree_is_flax_layernorm_s():
    x = jnp.ones((2, 3))
    ours = MLP((8, 8), 1).init(jax.random.PRNGKey(0), x)
    names = {
        "/".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(ours)
    }
    assert {"params/LayerNorm_0/scale", "params/LayerNorm_1/bias", "params/Dense_2/kernel"} <= names
    flax_ln = nn.LayerNorm().init(jax.random.PRNGKey(0), jnp.ones((2, 8)))
    ln = LayerNorm().init(jax.random.PRNGKey(0), jnp.ones((2, 8)))
    assert jax.tree.map(jnp.shape, ln) == jax.tree.map(jnp.shape, flax_ln)


def _rms_reference(x, scale, bias, act):
    return act(x / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * scale + bias)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_rms_norm_custom_vjp_matches_autodiff(name):
    from wm_jax.networks.common import rms_norm_act

    act = ACTIVATIONS[name]
    kx, ks, kb, kg = jax.random.split(jax.random.PRNGKey(7), 4)
    x = 3.0 * jax.random.normal(kx, (3, 5, 16)) + 1.0
    scale = 1.0 + 0.3 * jax.random.normal(ks, (16,))
    bias = 0.2 * jax.random.normal(kb, (16,))
    cot = jax.random.normal(kg, x.shape)

    def loss(f):
        return lambda x, s, b: jnp.sum(f(x, s, b) * cot)

    fused = lambda x, s, b: rms_norm_act(x, s, b, act)  # noqa: E731
    ref = lambda x, s, b: _rms_reference(x, s, b, act)  # noqa: E731
    np.testing.assert_allclose(fused(x, scale, bias), ref(x, scale, bias), rtol=1e-5, atol=1e-5)
    got = jax.jit(jax.grad(loss(fused), argnums=(0, 1, 2)))(x, scale, bias)
    want = jax.grad(loss(ref), argnums=(0, 1, 2))(x, scale, bias)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_model_norm_rms_builds_rmsnorm_layers_and_is_validated():
    from conftest import small_config

    from wm_jax.config import ConfigError, validate
    from wm_jax.networks import build_networks

    x = jnp.ones((2, 3))
    names = {
        "/".join(str(k.key) for k in path)
        for path, _ in jax.tree_util.tree_leaves_with_path(
            MLP((8, 8), 1, layer_norm="rms").init(jax.random.PRNGKey(0), x)
        )
    }
    assert {"params/RMSNorm_0/scale", "params/RMSNorm_1/bias"} <= names
    assert not any("LayerNorm" in n for n in names)
    with pytest.raises(ValueError, match="normalisation"):
        MLP((8,), 1, layer_norm="batch").init(jax.random.PRNGKey(0), x)

    # The config field reaches every MLP of the agent; layer_norm=False still turns it off.
    from conftest import make_spec

    spec = make_spec(obs_shape=(3,), action_dim=1, discrete=False)
    cases = (("rms", True, {"RMSNorm"}), ("layer", True, {"LayerNorm"}), ("rms", False, set()))
    for norm, layer_norm, want in cases:
        config = small_config()
        config.model.norm, config.model.layer_norm = norm, layer_norm
        nets = build_networks(config, spec)
        params = nets.actor.init(jax.random.PRNGKey(0), jnp.ones((1, config.model.state_dim)))
        found = {n.split("_")[0] for n in _all_module_names(params) if "Norm_" in n}
        assert found == want, (norm, layer_norm, found)
    config = small_config()
    config.model.norm = "batch"
    with pytest.raises(ConfigError, match="model.norm"):
        validate(config)


def _all_module_names(params):
    names = set()
    for path, _ in jax.tree_util.tree_leaves_with_path(params):
        names.update(str(k.key) for k in path)
    return names
