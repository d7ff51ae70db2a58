import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wm_jax.returns import discount_weights, lambda_returns, symexp, symlog, td_targets, two_hot


def python_lambda_returns(rewards, continues, values_tp1, gamma, lambda_):
    """The seeds' formula written as a plain loop over time for each batch element."""
    h, b = rewards.shape
    out = np.zeros((h, b))
    for j in range(b):
        nxt = values_tp1[-1, j]
        for t in reversed(range(h)):
            nxt = rewards[t, j] + gamma * continues[t, j] * (
                (1 - lambda_) * values_tp1[t, j] + lambda_ * nxt
            )
            out[t, j] = nxt
    return out


def random_inputs(seed, h=15, b=7):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(h, b)).astype(np.float32)
    continues = (rng.random((h, b)) > 0.2).astype(np.float32)  # terminations sprinkled in
    values = rng.normal(size=(h, b)).astype(np.float32)
    return rewards, continues, values


class LambdaReturnsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_python_loop_with_terminations(self):
        fn = self.variant(lambda r, c, v: lambda_returns(r, c, v, 0.99, 0.95))
        for seed in range(3):
            r, c, v = random_inputs(seed)
            np.testing.assert_allclose(
                fn(r, c, v), python_lambda_returns(r, c, v, 0.99, 0.95), rtol=1e-5, atol=1e-5
            )

    @chex.variants(with_jit=True, without_jit=True)
    def test_lambda_zero_is_one_step_td(self):
        r, c, v = random_inputs(3)
        out = self.variant(lambda r, c, v: lambda_returns(r, c, v, 0.9, 0.0))(r, c, v)
        np.testing.assert_allclose(out, r + 0.9 * c * v, rtol=1e-5, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_lambda_one_is_discounted_monte_carlo_bootstrapped_at_horizon(self):
        r, c, v = random_inputs(4, h=6, b=3)
        out = self.variant(lambda r, c, v: lambda_returns(r, c, v, 0.9, 1.0))(r, c, v)
        expected = np.zeros_like(r)
        for j in range(r.shape[1]):
            g = v[-1, j]
            for t in reversed(range(r.shape[0])):
                g = r[t, j] + 0.9 * c[t, j] * g
                expected[t, j] = g
        np.testing.assert_allclose(out, expected, rtol=1e-5)

    def test_termination_cuts_off_everything_after_it(self):
        r, c, v = random_inputs(5, h=8, b=2)
        c[3] = 0.0
        base = lambda_returns(r, c, v, 0.99, 0.95)
        r2, v2 = r.copy(), v.copy()
        r2[4:] += 100.0
        v2[3:] -= 50.0
        changed = lambda_returns(r2, c, v2, 0.99, 0.95)
        np.testing.assert_allclose(base[:4], changed[:4], rtol=1e-6)
        np.testing.assert_allclose(base[3], r[3], rtol=1e-6)

    def test_gamma_zero_returns_rewards(self):
        r, c, v = random_inputs(6)
        np.testing.assert_allclose(lambda_returns(r, c, v, 0.0, 0.95), r, rtol=1e-6)

    def test_shape_mismatch_is_rejected(self):
        r, c, v = random_inputs(7)
        with pytest.raises(AssertionError):
            lambda_returns(r, c[:-1], v, 0.99, 0.95)

    def test_gradient_flows_to_rewards_and_values(self):
        r, c, v = random_inputs(8, h=4, b=2)
        gr, gv = jax.grad(lambda r, v: lambda_returns(r, c, v, 0.99, 0.95).sum(), (0, 1))(r, v)
        assert jnp.all(jnp.isfinite(gr)) and jnp.abs(gr).sum() > 0 and jnp.abs(gv).sum() > 0


def test_td_targets_and_discount_weights():
    r = jnp.array([1.0, 2.0])
    c = jnp.array([1.0, 0.0])
    v = jnp.array([10.0, 10.0])
    np.testing.assert_allclose(td_targets(r, c, v, 0.5), [6.0, 2.0])
    w = discount_weights(jnp.array([[1.0], [0.0], [1.0]]), 0.5)
    np.testing.assert_allclose(w[:, 0], [1.0, 0.5, 0.0])


def test_return_scale_is_the_percentile_spread_but_never_below_one():
    from wm_jax.returns import return_scale

    returns = jnp.linspace(0.0, 100.0, 101)
    np.testing.assert_allclose(return_scale(returns, jnp.ones(101)), 90.0, rtol=1e-5)
    np.testing.assert_allclose(return_scale(returns * 0.001, jnp.ones(101)), 1.0)
    # Padded entries (weight 0) are ignored.
    weights = (returns <= 10).astype(jnp.float32)
    np.testing.assert_allclose(return_scale(returns, weights), 9.0, rtol=1e-5)


def test_symexp_inverts_symlog_across_magnitudes():
    x = jnp.array([-1e4, -3.0, -0.1, 0.0, 0.1, 3.0, 500.0, 1e4])
    np.testing.assert_allclose(symexp(symlog(x)), x, rtol=1e-5)
    np.testing.assert_allclose(symlog(jnp.array([0.0, np.e - 1])), [0.0, 1.0], rtol=1e-6)


def test_two_hot_puts_mass_on_the_bracketing_bins_and_keeps_the_mean():
    centers = jnp.linspace(-2.0, 2.0, 5)  # -2, -1, 0, 1, 2
    w = two_hot(jnp.array([0.25, -1.0, 7.0, -7.0]), centers)
    np.testing.assert_allclose(w[0], [0, 0, 0.75, 0.25, 0], atol=1e-6)
    np.testing.assert_allclose(w[1], [0, 1, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(w[2], [0, 0, 0, 0, 1], atol=1e-6)  # clipped to the range
    np.testing.assert_allclose(w[3], [1, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose((w * centers).sum(-1)[:2], [0.25, -1.0], rtol=1e-6)
