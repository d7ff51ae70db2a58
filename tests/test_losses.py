import chex
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wm_jax import losses
from wm_jax.networks.heads import ValueFunction
from wm_jax.types import Imagined


class WorldModelLossesTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_dynamics_mse_and_nll_match_formulas(self):
        mean = jnp.array([[0.0, 1.0], [2.0, 2.0]])
        std = jnp.full_like(mean, 0.5)
        target = jnp.array([[1.0, 1.0], [2.0, 0.0]])
        mask = jnp.ones(2)

        def fn(kind):
            return losses.dynamics_loss(distrax.Normal(mean, std), target, mask, kind)

        mse, m = self.variant(lambda: fn("mse"))()
        np.testing.assert_allclose(mse, np.mean([(1 + 0) / 2, (0 + 4) / 2]), rtol=1e-6)
        nll, _ = self.variant(lambda: fn("nll"))()
        per = 0.5 * np.log(2 * np.pi * 0.25) + (np.array([[1, 0], [0, 4]]) / (2 * 0.25))
        np.testing.assert_allclose(nll, per.sum(-1).mean(), rtol=1e-5)
        np.testing.assert_allclose(m["dynamics_mse"], mse)

    def test_dynamics_loss_trains_every_ensemble_member(self):
        members = jnp.stack([jnp.zeros((3, 2)), jnp.ones((3, 2))])  # [K=2, B=3, S=2]
        loss, _ = losses.dynamics_loss(
            distrax.Normal(members, jnp.ones_like(members)), jnp.ones((3, 2)), jnp.ones(3)
        )
        np.testing.assert_allclose(loss, 0.5)  # member 0 errs by 1, member 1 by 0

    def test_dynamics_loss_rejects_mismatched_state_shapes(self):
        with pytest.raises(ValueError, match="does not match"):
            losses.dynamics_loss(
                distrax.Normal(jnp.zeros((3, 2)), 1.0), jnp.zeros((3, 4)), jnp.ones(3)
            )

    @chex.variants(with_jit=True, without_jit=True)
    def test_reward_nll_and_mae(self):
        mu, sigma, r = 0.7, 0.3, 1.0
        loss, m = self.variant(
            lambda: losses.reward_loss(
                distrax.Normal(jnp.array([mu]), jnp.array([sigma])), jnp.array([r]), jnp.ones(1)
            )
        )()
        expected = 0.5 * np.log(2 * np.pi * sigma**2) + (r - mu) ** 2 / (2 * sigma**2)
        np.testing.assert_allclose(loss, expected, rtol=1e-5)
        np.testing.assert_allclose(m["reward_mae"], 0.3, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_continue_bce_accuracy_and_termination_counts(self):
        p = jnp.array([0.7, 0.2, 0.9, 0.4])  # predicted continue probabilities
        c = jnp.array([0.0, 0.0, 1.0, 1.0])
        loss, m = self.variant(
            lambda: losses.continue_loss(distrax.Bernoulli(probs=p), c, jnp.ones(4))
        )()
        expected = -np.mean(c * np.log(p) + (1 - c) * np.log(1 - p))
        np.testing.assert_allclose(loss, expected, rtol=1e-5)
        np.testing.assert_allclose(m["continue_accuracy"], 0.5)  # 0.2 and 0.9 right
        assert float(m["continue_true_terminations"]) == 2
        assert float(m["continue_predicted_terminations"]) == 2  # 0.2 and 0.4
        assert float(m["continue_correct_terminations"]) == 1

    def test_decoder_and_representation_losses(self):
        recon = jnp.zeros((2, 3))
        target = jnp.array([[1.0, 1.0, 1.0], [0.0, 0.0, 3.0]])
        loss, _ = losses.decoder_loss(recon, target, jnp.array([1.0, 0.0]))
        np.testing.assert_allclose(loss, 1.0)  # the padded second row does not count
        f = jnp.ones((2, 4))
        ae, m = losses.representation_loss(f, jnp.zeros((2, 4)), jnp.ones(2))
        np.testing.assert_allclose(ae, 1.0)
        assert "representation_kl" not in m
        vae, m = losses.representation_loss(
            f, f, jnp.ones(2), jnp.ones((2, 3)), jnp.ones((2, 3)), vae_beta=2.0
        )
        np.testing.assert_allclose(m["representation_kl"], 3 * 0.5)  # KL(N(1,1)||N(0,1)) = 1/2
        np.testing.assert_allclose(vae, 3.0)

    def test_representation_loss_does_not_pull_on_features(self):
        g = jax.grad(lambda f: losses.representation_loss(f, 2 * f, jnp.ones(2))[0])(
            jnp.ones((2, 4))
        )
        # d/df mean((2f - sg(f))²) = 2·2·(2f - f)/N: only the reconstruction path carries gradient.
        np.testing.assert_allclose(g, np.full((2, 4), 4 * 1.0 / 8))


def _shift_dynamics(state, action):
    """s' = s + a: a known linear system."""
    return state + action


class MultiStepLossTest(chex.TestCase):
    def test_perfect_model_has_zero_loss(self):
        actions = jnp.ones((2, 5, 1))
        states = jnp.cumsum(jnp.concatenate([jnp.zeros((2, 1, 1)), actions], 1), 1)
        loss, _ = losses.multi_step_loss(
            _shift_dynamics, states, actions, jnp.ones((2, 5)), jnp.ones((2, 5))
        )
        np.testing.assert_allclose(loss, 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_open_loop_errors_compound_and_are_averaged(self):
        # True system: s' = s (actions ignored); model: s' = s + a with a = 1, so the open-loop
        # error at step t+1 is (t+1)².
        actions = jnp.ones((1, 3, 1))
        states = jnp.zeros((1, 4, 1))
        loss, m = self.variant(
            lambda: losses.multi_step_loss(
                _shift_dynamics, states, actions, jnp.ones((1, 3)), jnp.ones((1, 3))
            )
        )()
        np.testing.assert_allclose(loss, (1 + 4 + 9) / 3)
        np.testing.assert_allclose(m["multi_step_final_mse"], 9.0)

    def test_stops_accumulating_after_termination(self):
        actions = jnp.ones((1, 5, 1))
        states = jnp.zeros((1, 6, 1))
        cont = jnp.array([[1.0, 0.0, 1.0, 1.0, 1.0]])  # terminates at transition 1
        loss, _ = losses.multi_step_loss(_shift_dynamics, states, actions, cont, jnp.ones((1, 5)))
        np.testing.assert_allclose(loss, (1 + 4) / 2)  # only steps 0 and 1 count
        garbage = states.at[:, 3:].set(1e6)  # data after the termination is irrelevant
        loss2, _ = losses.multi_step_loss(_shift_dynamics, garbage, actions, cont, jnp.ones((1, 5)))
        np.testing.assert_allclose(loss, loss2)

    def test_open_loop_rollout_resets_to_true_state_after_termination(self):
        states = (jnp.arange(6.0) * 10).reshape(1, 6, 1)
        cont = jnp.array([[1.0, 0.0, 1.0, 1.0, 1.0]])
        pred = losses.open_loop_rollout(_shift_dynamics, states, jnp.ones((1, 5, 1)), cont)
        # 0 -> 1 -> 2 (terminal: restart from the true s_2 = 20) -> 21 -> 22
        np.testing.assert_allclose(pred[0, :, 0], [1.0, 2.0, 21.0, 22.0, 23.0])

    def test_padded_steps_contribute_no_loss_and_no_gradient(self):
        actions = jnp.ones((2, 4, 1))
        states = jnp.zeros((2, 5, 1))
        mask = jnp.array([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])

        def loss_fn(a):
            return losses.multi_step_loss(_shift_dynamics, states, a, jnp.ones((2, 4)), mask)[0]

        g = jax.grad(loss_fn)(actions)
        np.testing.assert_allclose(g[0, 2:], 0.0)
        assert jnp.all(g[1] != 0)


def _imagined(h=3, b=2):
    return Imagined(
        states=jnp.zeros((h + 1, b, 2)),
        actions=jnp.zeros((h, b, 1)),
        log_probs=jnp.full((h, b), -1.0),
        entropies=jnp.full((h, b), 0.5),
        rewards=jnp.ones((h, b)),
        continues=jnp.ones((h, b)),
        values=jnp.zeros((h + 1, b)),
    )


def test_actor_loss_is_negative_mean_return_minus_entropy_bonus():
    imagined = _imagined()
    returns = jnp.arange(6.0).reshape(3, 2)
    loss, m = losses.actor_loss(imagined, returns, jnp.ones((3, 2)), 0.01)
    np.testing.assert_allclose(loss, -2.5 - 0.01 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(m["mean_imagined_return"], 2.5)
    np.testing.assert_allclose(m["entropy"], 0.5)


def test_reinforce_actor_loss_uses_advantage_times_log_prob():
    imagined = _imagined()
    returns = jnp.full((3, 2), 2.0)
    baseline = jnp.full((3, 2), 0.5)
    loss, _ = losses.actor_loss(imagined, returns, jnp.ones((3, 2)), 0.0, "reinforce", baseline)
    np.testing.assert_allclose(loss, -(-1.0 * 1.5))


def test_centred_reinforce_advantages_drop_the_batchs_weighted_mean_offset():
    """center=True: the log-prob gradient is w·(A − mean_w A)/S, so a critic off by a common
    offset everywhere gives the same actor gradient as an exact one."""
    returns = jnp.array([[2.0, 5.0], [1.0, 4.0], [3.0, 0.0]])
    weights = jnp.array([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    baseline = jnp.full((3, 2), 0.5)

    def grad(center, offset):
        def loss(log_probs):
            imagined = _imagined().replace(log_probs=log_probs)
            return losses.actor_loss(
                imagined, returns, weights, 0.0, "reinforce", baseline + offset, 2.0, center
            )[0]

        return jax.grad(loss)(jnp.full((3, 2), -1.0))

    advantage = returns - baseline
    mean = jnp.sum(weights * advantage) / jnp.sum(weights)
    np.testing.assert_allclose(
        grad(True, 0.0), -weights * (advantage - mean) / 2.0 / jnp.sum(weights), rtol=1e-6
    )
    np.testing.assert_allclose(grad(True, 7.0), grad(True, 0.0), atol=1e-6)
    # Uncentred, the same offset changes the gradient: the check can fail.
    assert not np.allclose(grad(False, 7.0), grad(False, 0.0))


def test_critic_loss_targets_are_held_fixed_and_td_monitor():
    values = jnp.array([1.0, 3.0])
    targets = jnp.array([2.0, 2.0])
    w = jnp.ones(2)
    loss, m = losses.critic_loss(values, targets, w)
    np.testing.assert_allclose(loss, 1.0)
    np.testing.assert_allclose(m["critic_value_std"], 1.0)
    g = jax.grad(lambda t: losses.critic_loss(values, t, w)[0])(targets)
    np.testing.assert_allclose(g, 0.0)
    td = losses.td_error_monitor(values, jnp.array([2.0, 4.0]), w)
    np.testing.assert_allclose(td["critic_td_error_mean"], -1.0)
    np.testing.assert_allclose(td["critic_td_error_abs_mean"], 1.0)
    np.testing.assert_allclose(td["critic_explained_variance"], 1.0)  # δ is constant


def test_masked_mean_ignores_padding():
    np.testing.assert_allclose(
        losses.masked_mean(jnp.array([1.0, 100.0]), jnp.array([1.0, 0.0])), 1.0
    )
    np.testing.assert_allclose(losses.masked_mean(jnp.ones(3), jnp.zeros(3)), 0.0)


def test_termination_weight_scales_only_the_terminal_samples():
    dist = distrax.Bernoulli(probs=jnp.array([0.9, 0.9]))
    c = jnp.array([1.0, 0.0])
    base, _ = losses.continue_loss(dist, c, jnp.ones(2))
    weighted, _ = losses.continue_loss(dist, c, jnp.ones(2), termination_weight=5.0)
    expected = -(np.log(0.9) + 5.0 * np.log(0.1)) / 2
    np.testing.assert_allclose(weighted, expected, rtol=1e-5)
    assert weighted > base


def _all_losses():
    b, h, s = 3, 4, 2
    normal = distrax.Normal(jnp.zeros((b, s)), jnp.ones((b, s)))
    ones = jnp.ones(b)
    return {
        "dynamics": lambda: losses.dynamics_loss(normal, jnp.ones((b, s)), ones, "nll"),
        "reward": lambda: losses.reward_loss(distrax.Normal(jnp.zeros(b), 1.0 + ones), ones, ones),
        "continue": lambda: losses.continue_loss(distrax.Bernoulli(logits=ones), ones, ones),
        "decoder": lambda: losses.decoder_loss(jnp.zeros((b, 5)), jnp.ones((b, 5)), ones),
        "representation": lambda: losses.representation_loss(
            jnp.ones((b, 6)), jnp.zeros((b, 6)), ones, jnp.zeros((b, s)), jnp.ones((b, s))
        ),
        "multi_step": lambda: losses.multi_step_loss(
            _shift_dynamics,
            jnp.zeros((b, h + 1, 1)),
            jnp.ones((b, h, 1)),
            jnp.ones((b, h)),
            jnp.ones((b, h)),
        ),
        "actor": lambda: losses.actor_loss(
            _imagined(h, b), jnp.ones((h, b)), jnp.ones((h, b)), 0.01
        ),
        "critic": lambda: losses.critic_loss(jnp.zeros((h, b)), jnp.ones((h, b)), jnp.ones((h, b))),
    }


@pytest.mark.parametrize("name", sorted(_all_losses()))
def test_every_loss_jits_and_returns_a_scalar_with_named_metrics(name):
    fn = _all_losses()[name]
    eager_loss, eager_metrics = fn()
    jit_loss, jit_metrics = jax.jit(fn)()
    assert jnp.shape(jit_loss) == ()
    np.testing.assert_allclose(jit_loss, eager_loss, rtol=1e-5)
    assert set(jit_metrics) == set(eager_metrics)
    assert any(key.startswith(name) or key == "actor_loss" for key in jit_metrics)


def test_distributional_critic_loss_is_cross_entropy_to_two_hot_symlog_targets():
    centers = jnp.linspace(-2.0, 2.0, 5)
    targets = jnp.array([np.e - 1.0])  # symlog → exactly 1.0, the fourth bin
    logits = jnp.log(jnp.array([[0.1, 0.1, 0.1, 0.6, 0.1]]))
    values = jnp.array([0.0])  # the read-out does not enter the loss
    loss, _ = losses.critic_loss(values, targets, jnp.ones(1), logits, centers)
    np.testing.assert_allclose(loss, -np.log(0.6), rtol=1e-5)
    g = jax.grad(lambda t: losses.critic_loss(values, t, jnp.ones(1), logits, centers)[0])(targets)
    np.testing.assert_allclose(g, 0.0)


def test_distributional_critic_fits_returns_of_very_different_sizes():
    critic = ValueFunction((16,), bins=41)
    states = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    targets = jnp.array([3.0, 400.0])
    params = critic.init(jax.random.PRNGKey(0), states)
    opt = optax.adam(1e-2)

    def loss_fn(p):
        logits = critic.apply(p, states, method=critic.logits)
        return losses.critic_loss(
            critic.readout(logits), targets, jnp.ones(2), logits, critic.bin_centers
        )[0]

    @jax.jit
    def step(p, s):
        g = jax.grad(loss_fn)(p)
        u, s = opt.update(g, s)
        return optax.apply_updates(p, u), s

    opt_state = opt.init(params)
    for _ in range(300):
        params, opt_state = step(params, opt_state)
    np.testing.assert_allclose(critic.apply(params, states), targets, rtol=0.05)


def test_reward_correlation_on_hand_made_predictions():
    rewards = jnp.array([0.0, 1.0, 2.0, 3.0, 100.0])
    mask = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0])  # the padded outlier must not count
    perfect = distrax.Normal(2.0 * rewards + 1.0, jnp.ones(5))
    _, m = losses.reward_loss(perfect, rewards, mask)
    np.testing.assert_allclose(m["reward_correlation"], 1.0, rtol=1e-5)
    flipped = distrax.Normal(-rewards, jnp.ones(5))
    _, m = losses.reward_loss(flipped, rewards, mask)
    np.testing.assert_allclose(m["reward_correlation"], -1.0, rtol=1e-5)
    _, m = losses.reward_loss(perfect, jnp.ones(5), mask)  # constant rewards: undefined
    assert np.isnan(m["reward_correlation"])


def test_termination_precision_and_recall_on_a_known_confusion_matrix():
    """4 true terminations, the predictor flags 5 states, 3 of them right: precision 3/5 and
    recall 3/4, aggregated across two batches from summed counts (not a mean of ratios)."""
    from wm_jax.metrics import aggregate

    # P(continue) per state; < 0.5 predicts a termination.  c = 0 marks a true termination.
    p1 = jnp.array([0.1, 0.2, 0.9, 0.9, 0.3, 0.9])
    c1 = jnp.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # TP, TP, FN, TN, FP, TN
    p2 = jnp.array([0.1, 0.4, 0.9])
    c2 = jnp.array([0.0, 1.0, 1.0])  # TP, FP, TN
    m1 = losses.continue_loss(distrax.Bernoulli(probs=p1), c1, jnp.ones(6))[1]
    m2 = losses.continue_loss(distrax.Bernoulli(probs=p2), c2, jnp.ones(3))[1]
    out = aggregate([m1, m2])
    assert out["continue_termination_precision"] == pytest.approx(3 / 5)
    assert out["continue_termination_recall"] == pytest.approx(3 / 4)
    assert out["continue_accuracy"] == pytest.approx((4 / 6 + 2 / 3) / 2)
