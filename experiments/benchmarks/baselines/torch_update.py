"""The seeds' update in PyTorch (CPU), written from the seeds' description: the design wm_jax
replaces, timed beside it by ``update_throughput.py`` (issue 18).  Needs the optional ``bench``
extra (``pip install -e .[bench]``); never imported by wm_jax.

The seeds' "three optimizer dance" (``001_*.txt``, Diagram 3), flat batch, 1-D continuous action:

1. one forward pass computes all three losses: the world-model loss (dynamics MSE, reward NLL,
   continue BCE, decoder MSE, autoencoder reconstruction), the actor loss over an ``H``-step
   imagination rollout from the batch's states (reparameterised tanh-Normal actions, gradient
   through dynamics/reward/continue/value to the policy) and the critic loss (MSE of ``V`` on the
   detached λ-returns);
2. ``world_model_loss.backward(retain_graph=True)``; the world-model gradients are saved
   (``p.grad.clone()``);
3. ``actor_loss.backward(retain_graph=True)`` also writes world-model (and value-function)
   gradients; the saved world-model gradients are restored;
4. ``critic_loss.backward()`` (the value function's gradients are zeroed first so the actor's
   side effect does not leak into them);
5. ``clip_grad_norm_(·, 1.0)`` and ``step()`` of each of the three Adam optimisers.

Sizes as in the benchmark: features 256, states 64, hidden 256, H = 15; no LayerNorm (the seeds
have none).  The maths matches :mod:`plain_jax_update`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

GAMMA, LAMBDA, ENTROPY = 0.99, 0.95, 0.01


def _mlp(sizes, final_act=False, out_scale=1.0):
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or final_act:
            layers.append(nn.ELU())
    with torch.no_grad():
        layers[-1 if not final_act else -2].weight.mul_(out_scale)
    return nn.Sequential(*layers)


class WorldModel(nn.Module):
    def __init__(self, obs_dim, action_dim, features=256, states=64, hidden=256):
        super().__init__()
        h2 = (hidden, hidden)
        self.encoder = _mlp((obs_dim, hidden, features), final_act=True)
        self.rep_encode = _mlp((features, hidden, states))
        self.rep_decode = _mlp((states, hidden, features))
        self.dynamics = _mlp((states + action_dim, *h2, 2 * states))
        self.reward = _mlp((states, *h2, 2), out_scale=0.1)
        self.cont = _mlp((states, *h2, 1), out_scale=0.1)
        self.decoder = _mlp((states, *h2, obs_dim))

    def encode(self, obs):
        features = self.encoder(obs)
        return features, self.rep_encode(features)

    def predict_next(self, s, a):
        mean, raw = self.dynamics(torch.cat([s, a], -1)).chunk(2, -1)
        return s + mean, 0.05 + 1.95 * torch.sigmoid(raw + 2.0)

    def reward_dist(self, s):
        out = self.reward(s)
        return out[..., 0], 0.01 + 4.99 * torch.sigmoid(out[..., 1])


class Actor(nn.Module):
    def __init__(self, states, action_dim, hidden=256):
        super().__init__()
        self.net = _mlp((states, hidden, hidden, 2 * action_dim), out_scale=0.1)

    def forward(self, s):
        mean, raw = self.net(s).chunk(2, -1)
        std = 0.1 + 0.9 * torch.sigmoid(raw + 2.0)
        eps = torch.randn_like(mean)
        u = mean + std * eps
        log_prob = -0.5 * eps**2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
        log_prob = log_prob - 2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))
        return torch.tanh(u).clamp(-1 + 1e-6, 1 - 1e-6), log_prob.sum(-1)


class TorchUpdate:
    """``step(batch)`` runs one full update; ``batch`` = (obs, action, reward, next_obs, cont)."""

    def __init__(self, obs_dim, action_dim, horizon=15, features=256, states=64, hidden=256):
        self.horizon = horizon
        self.wm = WorldModel(obs_dim, action_dim, features, states, hidden)
        self.actor = Actor(states, action_dim, hidden)
        self.critic = _mlp((states, hidden, hidden, 1), out_scale=0.0)
        self.wm_opt = torch.optim.Adam(self.wm.parameters(), lr=1e-4)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=3e-5)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=3e-5)

    def _losses(self, batch):
        obs, action, rew, next_obs, cont = batch
        wm, b = self.wm, obs.shape[0]
        all_obs = torch.cat([obs, next_obs], 0)
        features, states = wm.encode(all_obs)
        s, s_next = states[:b], states[b:]
        rep = ((wm.rep_decode(states) - features.detach()) ** 2).mean()
        mean, _ = wm.predict_next(s, action)
        dyn = ((mean - s_next.detach()) ** 2).mean()
        mu, std = wm.reward_dist(s_next)
        rew_nll = (0.5 * torch.log(2 * math.pi * std**2) + (rew - mu) ** 2 / (2 * std**2)).mean()
        bce = nn.functional.binary_cross_entropy_with_logits(wm.cont(s_next)[..., 0], cont)
        dec = ((wm.decoder(states) - all_obs) ** 2).mean()
        wm_loss = dyn + rew_nll + bce + dec + rep

        # Imagination from the batch's states, graph kept through the world model.
        state = s.detach()
        imag_states, entropies, rewards, conts, values = [state], [], [], [], []
        values.append(self.critic(state)[..., 0])
        for _ in range(self.horizon):
            a, log_prob = self.actor(state)
            state, _ = wm.predict_next(state, a)
            imag_states.append(state)
            entropies.append(-log_prob)
            rewards.append(wm.reward_dist(state)[0])
            conts.append(torch.sigmoid(wm.cont(state)[..., 0]))
            values.append(self.critic(state)[..., 0])
        ret, returns = values[-1], []
        for t in reversed(range(self.horizon)):
            ret = rewards[t] + GAMMA * conts[t] * ((1 - LAMBDA) * values[t + 1] + LAMBDA * ret)
            returns.append(ret)
        returns = torch.stack(returns[::-1])
        actor_loss = -returns.mean() - ENTROPY * torch.stack(entropies).mean()
        v = self.critic(torch.stack(imag_states[:-1]).detach())[..., 0]
        critic_loss = ((v - returns.detach()) ** 2).mean()
        return wm_loss, actor_loss, critic_loss

    def step(self, batch):
        for opt in (self.wm_opt, self.actor_opt, self.critic_opt):
            opt.zero_grad(set_to_none=True)
        wm_loss, actor_loss, critic_loss = self._losses(batch)
        wm_params = list(self.wm.parameters())
        wm_loss.backward(retain_graph=True)
        saved = [p.grad.clone() for p in wm_params]
        actor_loss.backward(retain_graph=True)
        for p, g in zip(wm_params, saved, strict=True):
            p.grad = g
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        for module, opt in (
            (self.wm, self.wm_opt),
            (self.actor, self.actor_opt),
            (self.critic, self.critic_opt),
        ):
            nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            opt.step()
        return wm_loss.item(), actor_loss.item(), critic_loss.item()


def random_batch(batch_size, obs_dim, action_dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch_size, obs_dim, generator=g),
        torch.rand(batch_size, action_dim, generator=g) * 2 - 1,
        torch.randn(batch_size, generator=g),
        torch.randn(batch_size, obs_dim, generator=g),
        (torch.rand(batch_size, generator=g) < 0.95).float(),
    )
