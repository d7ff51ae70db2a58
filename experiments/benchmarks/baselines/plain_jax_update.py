"""The seeds' update as a minimal jitted JAX program, with no wm_jax code: the floor wm_jax's
update must never fall below (issue 18).

The maths of :mod:`torch_update` (the seeds' design, flat batch, 1-D continuous action):

* world model: MLP encoder ``obs -> features`` (2 × hidden, ELU), autoencoder ``features ->
  states -> features``, residual dynamics ``(s, a) -> N(μ, σ)`` (MSE to ``sg(s')``), reward
  ``s' -> N(μ, σ)`` (NLL), continue ``s' -> Bernoulli`` (BCE), decoder ``s -> obs`` (MSE);
* actor: ``H`` imagined steps from ``sg(s)`` with a reparameterised tanh-Normal policy, gradient
  through the (stop-gradient) world model to the actions; loss ``-mean(R^λ) - 0.01·mean(H[π])``;
* critic: MSE of ``V(s_t)`` on the stop-gradient λ-returns, bootstrapped with the values the
  rollout computed (no second evaluation);
* three Adam optimisers after ``clip_by_global_norm(1.0)`` (optax).

No LayerNorm anywhere (the seeds have none).  ``precision="bfloat16"`` feeds every matmul, the
backward ones included, bf16 operands with f32 accumulation (``preferred_element_type``);
parameters, losses and optimiser states stay f32.  ``unroll`` is passed to the imagination
``lax.scan`` (``unroll=horizon`` lets XLA's cost analysis count every step).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

GAMMA, LAMBDA, ENTROPY = 0.99, 0.95, 0.01
sg = jax.lax.stop_gradient


def _mlp_init(key, sizes, out_scale=1.0):
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        key, sub = jax.random.split(key)
        scale = out_scale if i == len(sizes) - 2 else 1.0
        w = jax.random.normal(sub, (n_in, n_out), jnp.float32) * scale / jnp.sqrt(n_in)
        layers.append({"w": w, "b": jnp.zeros((n_out,), jnp.float32)})
    return layers


@jax.custom_vjp
def _bf16_matmul(x, w):
    """``x @ w`` with bf16 operands and f32 accumulation, forward and backward."""
    return _bf16_fwd(x, w)[0]


def _dot(a, b, contract):
    return jax.lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)


def _bf16_fwd(x, w):
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    return _dot(xb, wb, ((x.ndim - 1,), (0,))), (xb, wb)


def _bf16_bwd(residuals, g):
    xb, wb = residuals
    gb = g.astype(jnp.bfloat16)
    lead = tuple(range(g.ndim - 1))
    return _dot(gb, wb, ((g.ndim - 1,), (1,))), _dot(xb, gb, (lead, lead))


_bf16_matmul.defvjp(_bf16_fwd, _bf16_bwd)


def _mlp(layers, x, dtype, final_act=False):
    for i, p in enumerate(layers):
        if dtype == jnp.float32:
            x = x @ p["w"] + p["b"]
        else:
            x = _bf16_matmul(x, p["w"]) + p["b"]
        if i < len(layers) - 1 or final_act:
            x = jax.nn.elu(x)
    return x


def init_params(key, obs_dim, action_dim, features=256, states=64, hidden=256):
    k = jax.random.split(key, 9)
    h2 = (hidden, hidden)
    wm = {
        "encoder": _mlp_init(k[0], (obs_dim, hidden, features)),
        "rep_encode": _mlp_init(k[1], (features, hidden, states)),
        "rep_decode": _mlp_init(k[2], (states, hidden, features)),
        "dynamics": _mlp_init(k[3], (states + action_dim, *h2, 2 * states)),
        "reward": _mlp_init(k[4], (states, *h2, 2), 0.1),
        "continue": _mlp_init(k[5], (states, *h2, 1), 0.1),
        "decoder": _mlp_init(k[6], (states, *h2, obs_dim)),
    }
    actor = _mlp_init(k[7], (states, *h2, 2 * action_dim), 0.1)
    critic = _mlp_init(k[8], (states, *h2, 1), 0.0)
    return wm, actor, critic


def make_update(obs_dim, action_dim, horizon=15, precision="float32", unroll=1, **sizes):
    """Returns ``(init(key) -> state, update(state, batch) -> (state, losses))``; ``batch`` is
    ``(obs, action, reward, next_obs, cont)`` with leading axis B."""
    dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
    mlp = functools.partial(_mlp, dtype=dtype)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-4))
    opt_ac = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-5))

    def encode(wm, obs):
        features = mlp(wm["encoder"], obs, final_act=True)
        return features, mlp(wm["rep_encode"], features)

    def dynamics(wm, s, a):
        out = mlp(wm["dynamics"], jnp.concatenate([s, a], -1))
        mean, raw = jnp.split(out, 2, -1)
        return s + mean, 0.05 + 1.95 * jax.nn.sigmoid(raw + 2.0)

    def reward(wm, s):
        out = mlp(wm["reward"], s)
        return out[..., 0], 0.01 + 4.99 * jax.nn.sigmoid(out[..., 1])

    def cont_logit(wm, s):
        return mlp(wm["continue"], s)[..., 0]

    def value(critic, s):
        return mlp(critic, s)[..., 0]

    def wm_loss(wm, batch):
        obs, action, rew, next_obs, cont = batch
        b = obs.shape[0]
        all_obs = jnp.concatenate([obs, next_obs], 0)
        features, states = encode(wm, all_obs)
        s, s_next = states[:b], states[b:]
        rep = jnp.mean((mlp(wm["rep_decode"], states) - sg(features)) ** 2)
        mean, _ = dynamics(wm, s, action)
        dyn = jnp.mean((mean - sg(s_next)) ** 2)
        mu, std = reward(wm, s_next)
        rew_nll = jnp.mean(0.5 * jnp.log(2 * jnp.pi * std**2) + (rew - mu) ** 2 / (2 * std**2))
        logit = cont_logit(wm, s_next)
        bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logit, cont))
        dec = jnp.mean((mlp(wm["decoder"], states) - all_obs) ** 2)
        return dyn + rew_nll + bce + dec + rep, s

    def policy(actor, s, key):
        out = mlp(actor, s)
        mean, raw = jnp.split(out, 2, -1)
        std = 0.1 + 0.9 * jax.nn.sigmoid(raw + 2.0)
        eps = jax.random.normal(key, mean.shape)
        u = mean + std * eps
        log_prob = -0.5 * eps**2 - jnp.log(std) - 0.5 * jnp.log(2 * jnp.pi)
        log_prob -= 2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u))  # tanh correction
        return jnp.clip(jnp.tanh(u), -1 + 1e-6, 1 - 1e-6), jnp.sum(log_prob, -1)

    def imagine(wm, actor, critic, s0, key):
        def step(s, k):
            a, log_prob = policy(actor, s, k)
            nxt, _ = dynamics(wm, s, a)
            r, _ = reward(wm, nxt)
            c = jax.nn.sigmoid(cont_logit(wm, nxt))
            return nxt, (nxt, -log_prob, r, c, value(critic, nxt))

        keys = jax.random.split(key, horizon)
        _, (states, ent, r, c, v) = jax.lax.scan(step, s0, keys, unroll=unroll)
        return jnp.concatenate([s0[None], states], 0), ent, r, c, v

    def lambda_returns(r, c, v):
        def step(nxt, x):
            r_t, c_t, v_t = x
            ret = r_t + GAMMA * c_t * ((1 - LAMBDA) * v_t + LAMBDA * nxt)
            return ret, ret

        return jax.lax.scan(step, v[-1], (r, c, v), reverse=True)[1]

    def actor_loss(actor, wm, critic, s0, key):
        states, ent, r, c, v = imagine(sg(wm), actor, sg(critic), s0, key)
        returns = lambda_returns(r, c, v)
        return -jnp.mean(returns) - ENTROPY * jnp.mean(ent), (states, returns)

    def critic_loss(critic, states, returns):
        return jnp.mean((value(critic, states[:-1]) - returns) ** 2)

    def init(key):
        wm, actor, critic = init_params(key, obs_dim, action_dim, **sizes)
        params = (wm, actor, critic)
        return params, (opt.init(wm), opt_ac.init(actor), opt_ac.init(critic)), key

    @jax.jit
    def update(state, batch):
        (wm, actor, critic), (o_wm, o_actor, o_critic), key = state
        key, k_imagine = jax.random.split(key)
        (l_wm, s), g_wm = jax.value_and_grad(wm_loss, has_aux=True)(wm, batch)
        (l_actor, (states, returns)), g_actor = jax.value_and_grad(actor_loss, has_aux=True)(
            actor, wm, critic, sg(s), k_imagine
        )
        l_critic, g_critic = jax.value_and_grad(critic_loss)(critic, sg(states), sg(returns))
        u, o_wm = opt.update(g_wm, o_wm, wm)
        wm = optax.apply_updates(wm, u)
        u, o_actor = opt_ac.update(g_actor, o_actor, actor)
        actor = optax.apply_updates(actor, u)
        u, o_critic = opt_ac.update(g_critic, o_critic, critic)
        critic = optax.apply_updates(critic, u)
        state = ((wm, actor, critic), (o_wm, o_actor, o_critic), key)
        return state, (l_wm, l_actor, l_critic)

    return init, update
