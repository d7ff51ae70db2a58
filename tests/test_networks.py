import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_spec, small_config

from wm_jax import losses
from wm_jax.imagination import imagine, next_state
from wm_jax.losses import reward_loss
from wm_jax.networks import (
    CNNDecoder,
    CNNEncoder,
    EnsembleDynamics,
    PolicyHead,
    RewardPredictor,
    VAERepresentation,
    build_networks,
)


@pytest.mark.parametrize("shape", [(64, 64, 3), (84, 84, 3), (10, 10, 4)])
def test_cnn_encoder_decoder_round_trip_shapes(shape):
    obs = jnp.zeros((2, 3, *shape), jnp.uint8)  # leading [B, T] axes survive
    enc = CNNEncoder(feature_dim=16, depth=4)
    # Shapes only: eval_shape traces without running the convolutions.
    features, _ = jax.eval_shape(enc.init_with_output, jax.random.PRNGKey(0), obs)
    assert features.shape == (2, 3, 16)
    dec = CNNDecoder(shape, depth=4)
    recon, _ = jax.eval_shape(dec.init_with_output, jax.random.PRNGKey(1), jnp.zeros((2, 3, 8)))
    assert recon.shape == (2, 3, *shape)
    assert recon.dtype == jnp.float32


def test_ensemble_dynamics_members_are_distinct_and_leading():
    dyn = EnsembleDynamics(num_members=3, state_dim=5, hidden=(8,))
    dist, _ = dyn.init_with_output(jax.random.PRNGKey(0), jnp.ones((4, 5)), jnp.ones((4, 2)))
    assert dist.loc.shape == (3, 4, 5)
    assert not jnp.allclose(dist.loc[0], dist.loc[1])
    picked = next_state(dist, jax.random.PRNGKey(1), sample=False)
    assert picked.shape == (4, 5)
    # Every picked row is one of the members' rows.
    match = jnp.any(jnp.all(jnp.isclose(picked[None], dist.loc), -1), 0)
    assert bool(jnp.all(match))


def test_vae_samples_in_training_and_uses_the_mean_when_acting():
    vae = VAERepresentation(state_dim=4, feature_dim=6, hidden=(8,))
    f = jnp.ones((2, 6))
    params = vae.init({"params": jax.random.PRNGKey(0), "sample": jax.random.PRNGKey(1)}, f, True)
    out_a = vae.apply(params, f, True, rngs={"sample": jax.random.PRNGKey(2)})
    out_b = vae.apply(params, f, True, rngs={"sample": jax.random.PRNGKey(3)})
    assert not jnp.allclose(out_a.states, out_b.states)
    mean = vae.apply(params, f, False, method=vae.encode)
    np.testing.assert_allclose(mean, out_a.mean, rtol=1e-6)


def test_fixed_reward_std_makes_loss_2_a_squared_error():
    states, rewards = jax.random.normal(jax.random.PRNGKey(0), (6, 5)), jnp.arange(6.0) - 3
    head = RewardPredictor(hidden=(8,), fixed_std=2.0)
    params = head.init(jax.random.PRNGKey(1), states)
    dist = head.apply(params, states)
    np.testing.assert_allclose(dist.scale, 2.0)
    loss, _ = reward_loss(dist, rewards, jnp.ones(6))
    squared = jnp.mean((rewards - dist.loc) ** 2) / (2 * 2.0**2)
    np.testing.assert_allclose(loss, squared + 0.5 * jnp.log(2 * jnp.pi * 4.0), rtol=1e-5)
    # Wired from the config: the fixed head has one output (no σ parameters).
    config = small_config(**{"model.reward_std": "fixed", "model.reward_fixed_std": 0.5})
    nets = build_networks(config, make_spec())
    assert nets.world_model.reward_predictor.fixed_std == 0.5
    learned = build_networks(small_config(), make_spec()).world_model.reward_predictor
    assert learned.fixed_std is None


def test_policy_heads_produce_valid_actions():
    discrete = PolicyHead(action_dim=3, discrete=True, hidden=(8,))
    d, _ = discrete.init_with_output(jax.random.PRNGKey(0), jnp.ones((5, 4)))
    sample = d.sample(seed=jax.random.PRNGKey(1))
    np.testing.assert_allclose(sample.sum(-1), 1.0)
    continuous = PolicyHead(action_dim=2, discrete=False, hidden=(8,))
    c, _ = continuous.init_with_output(jax.random.PRNGKey(0), jnp.ones((5, 4)))
    a = c.sample(seed=jax.random.PRNGKey(1))
    assert a.shape == (5, 2) and bool(jnp.all(jnp.abs(a) < 1))


def _imagination_inputs(config):
    """``imagine``'s first six arguments for a fresh agent of ``config`` on 4-D observations and
    two discrete actions: networks, world-model/actor/critic parameters, 2 start states, a key."""
    nets = build_networks(config, make_spec(discrete=True))
    obs = jnp.zeros((2, 4))
    wm_params = nets.world_model.init(
        {"params": jax.random.PRNGKey(0), "sample": jax.random.PRNGKey(1)}, obs, jnp.zeros((2, 2))
    )
    actor_params = nets.actor.init(jax.random.PRNGKey(2), jnp.zeros((1, 8)))
    critic_params = nets.critic.init(jax.random.PRNGKey(3), jnp.zeros((1, 8)))
    starts = nets.world_model.apply(wm_params, obs, method=nets.world_model.encode)
    return nets, wm_params, actor_params, critic_params, starts, jax.random.PRNGKey(4)


@pytest.mark.parametrize(
    "overrides",
    [
        {"model.representation": "vae"},
        {"model.dynamics": "ensemble", "model.ensemble_size": 2},
        {"model.dynamics_std": "fixed", "world_model.dynamics_loss": "nll"},
        {"model.reward_std": "fixed"},
    ],
)
def test_alternative_components_build_and_imagine(overrides):
    imagined = imagine(*_imagination_inputs(small_config(**overrides)), horizon=4, discrete=True)
    assert imagined.states.shape == (5, 2, 8)
    assert imagined.values.shape == (5, 2)
    assert imagined.rewards.shape == imagined.continues.shape == (4, 2)
    assert bool(jnp.all(jnp.isfinite(imagined.states)))


def test_cnn_is_chosen_automatically_for_images():
    nets = build_networks(small_config(), make_spec(obs_shape=(10, 10, 4)))
    assert type(nets.world_model.encoder).__name__ == "CNNEncoder"
    assert type(nets.world_model.decoder).__name__ == "CNNDecoder"


def test_unknown_component_names_the_field_and_the_choices():
    with pytest.raises(ValueError, match=r"config.model.dynamics='transformr'.*ensemble"):
        build_networks(small_config(**{"model.dynamics": "transformr"}), make_spec())


def test_mlp_encoder_and_decoder_handle_matrix_observations():
    """A 2-D Box observation (e.g. a 10×5 board without a channel axis) is flattened whole,
    with the leading [B, T] axes kept, and decoded back to its shape."""
    from wm_jax.networks import MLPDecoder, MLPEncoder

    obs = jnp.zeros((2, 3, 10, 5))
    enc = MLPEncoder(feature_dim=16, hidden=(8,), obs_rank=2)
    features, _ = jax.eval_shape(enc.init_with_output, jax.random.PRNGKey(0), obs)
    assert features.shape == (2, 3, 16)
    recon, _ = jax.eval_shape(
        MLPDecoder((10, 5), (8,)).init_with_output, jax.random.PRNGKey(1), jnp.zeros((2, 3, 4))
    )
    assert recon.shape == (2, 3, 10, 5)
    nets = build_networks(small_config(), make_spec(obs_shape=(10, 5)))
    assert nets.world_model.encoder.obs_rank == 2


def test_weighted_continue_loss_shifts_the_logit_and_calibrated_imagination_undoes_it():
    """The continue loss weighs terminations by w: its optimum is P(term) inflated w-fold in odds
    (logit − log w).  "calibrated" imagination reads sigmoid(logit + log w), the true P(continue);
    "probs" reads the shifted one and "mode" its threshold."""
    w, p_continue = 10.0, 0.98
    continues = jnp.asarray([1.0] * 49 + [0.0])  # P(continue) = 0.98 in the data
    mask = jnp.ones(50)

    def loss(logit):
        return losses.continue_loss(
            distrax.Bernoulli(logits=jnp.full(50, logit)), continues, mask, w
        )[0]

    newton = jax.jit(lambda x: x - jax.grad(loss)(x) / jax.grad(jax.grad(loss))(x))
    logit = jnp.float32(0.0)
    for _ in range(30):  # Newton's method on a convex scalar loss (converges in ~8 steps)
        logit = newton(logit)
    assert float(jax.nn.sigmoid(logit)) == pytest.approx(49 / (49 + w), rel=1e-4)  # shifted
    assert float(jax.nn.sigmoid(logit + jnp.log(w))) == pytest.approx(p_continue, rel=1e-4)

    inputs = _imagination_inputs(small_config())
    out = {
        mode: imagine(
            *inputs, horizon=1, discrete=True, continue_mode=mode, termination_weight=w
        )
        for mode in ("probs", "calibrated", "mode")
    }
    logits = jnp.log(out["probs"].continues) - jnp.log1p(-out["probs"].continues)
    np.testing.assert_allclose(
        out["calibrated"].continues, jax.nn.sigmoid(logits + jnp.log(w)), rtol=1e-5
    )
    assert bool(jnp.all(out["calibrated"].continues > out["probs"].continues))
    np.testing.assert_array_equal(out["mode"].continues, (logits > 0).astype(jnp.float32))
    np.testing.assert_array_equal(out["calibrated"].states, out["probs"].states)
