"""A dynamics model defined outside the package trains through the normal loop once registered
(one module, one registry entry, no edit to the update steps), mistakes fail at start-up naming
the field, and docs/custom_dynamics.md's module, command and snippets run as written."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, small_config

from wm_jax.config import ConfigError, validate
from wm_jax.metrics import read_metrics
from wm_jax.networks import DYNAMICS, register_dynamics
from wm_jax.trainer import Trainer

DOC = os.path.join(REPO, "docs", "custom_dynamics.md")
EXAMPLE = os.path.join(REPO, "experiments", "custom_dynamics.py")


class LinearGaussianDynamics(nn.Module):
    """Toy model: ``μ = s + W[s, a] + b`` with a learned, state-independent std."""

    state_dim: int

    @nn.compact
    def __call__(self, state, action, context=None):
        del context
        mean = state + nn.Dense(self.state_dim, name="delta")(jnp.concatenate([state, action], -1))
        log_std = self.param("log_std", nn.initializers.zeros, (self.state_dim,))
        return distrax.Normal(mean, jnp.broadcast_to(jnp.exp(log_std), mean.shape))


TOY = "test_linear_gaussian"


def build_toy(m, spec):
    return LinearGaussianDynamics(m.state_dim)


register_dynamics(TOY, build_toy)


@pytest.mark.slow
def test_dynamics_registered_from_a_test_file_trains_through_the_loop(tmp_path):
    c = small_config(
        total_env_steps=200,
        prefill_steps=64,
        eval_every=0,
        log_every=100,
        checkpoint_every=0,
        report=False,
        **{
            "model.dynamics": TOY,
            # NLL so that the std parameter is trained too (MSE reads only the mean).
            "world_model.dynamics_loss": "nll",
            # Actor and critic from the first update: imagination runs through the toy model.
            "schedule.warmup_steps": 0,
            "schedule.transition_steps": 0,
            "diagnostics.open_loop_every": 0,
        },
    )
    trainer = Trainer(c, str(tmp_path / "run"))
    try:
        before = jax.tree.map(np.asarray, trainer.state.wm_params["params"]["dynamics"])
        trainer.run()
        after = jax.tree.map(np.asarray, trainer.state.wm_params["params"]["dynamics"])
    finally:
        trainer.close()
    spec = trainer.spec
    toy_params = LinearGaussianDynamics(c.model.state_dim).init(
        jax.random.PRNGKey(0),
        jnp.zeros((1, c.model.state_dim)),
        jnp.zeros((1, spec.action_dim)),
    )["params"]
    shapes = lambda tree: jax.tree.map(np.shape, tree)  # noqa: E731
    assert shapes(before) == shapes(after) == shapes(toy_params)
    changed = jax.tree.map(
        lambda a, b: bool(np.all(np.isfinite(b)) and np.any(a != b)), before, after
    )
    assert all(jax.tree.leaves(changed)), changed
    assert int(trainer.state.actor_updates) > 0  # imagination used the toy model
    rows = [r for r in read_metrics(str(tmp_path / "run")) if "dynamics_nll" in r]
    assert rows and all(np.isfinite(r["dynamics_nll"]) for r in rows)
    assert all(r["dynamics_grad_norm"] > 0 for r in rows)


def test_unknown_dynamics_name_fails_at_start_up_listing_the_registered_names(tmp_path):
    with pytest.raises(ConfigError) as err:
        Trainer(small_config(**{"model.dynamics": "no_such_dynamics"}), str(tmp_path / "run"))
    message = str(err.value)
    assert message.startswith("config.model.dynamics='no_such_dynamics' is not registered")
    for name in ("mlp", "ensemble", TOY):
        assert repr(name) in message
    assert "--config.imports" in message


def test_registering_a_taken_name_raises_and_keeps_the_first_builder():
    with pytest.raises(ValueError, match=rf"dynamics '{TOY}' is already registered \(by "):
        register_dynamics(TOY, lambda m, spec: LinearGaussianDynamics(1))
    with pytest.raises(ValueError, match="dynamics 'mlp' is already registered"):
        register_dynamics("mlp", build_toy)
    assert DYNAMICS[TOY] is build_toy


def test_config_imports_that_cannot_work_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"^config.imports: 'not a module' is not a module"):
        validate(small_config(imports="experiments.custom_dynamics, not a module"))
    with pytest.raises(ConfigError, match=r"^config.imports: cannot import 'no_such_wm_jax_mod'"):
        Trainer(small_config(imports="no_such_wm_jax_mod"), str(tmp_path / "run"))


# --- docs/custom_dynamics.md -----------------------------------------------------------------


def doc_blocks(language: str) -> list[str]:
    with open(DOC) as f:
        return re.findall(rf"```{language}\n(.*?)```", f.read(), flags=re.S)


def only_code(tree: ast.Module) -> str:
    """The AST without docstrings and ``from __future__`` imports (comments never reach it)."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:]
    tree.body = [
        n for n in tree.body if not (isinstance(n, ast.ImportFrom) and n.module == "__future__")
    ]
    return ast.dump(tree)


def test_docs_module_is_the_example_file_without_its_comments():
    (module,) = [b for b in doc_blocks("python") if "class GatedDynamics" in b]
    with open(EXAMPLE) as f:
        assert only_code(ast.parse(module)) == only_code(ast.parse(f.read()))


# Shrinks the docs' CartPole run to ~40 s (same code paths: sequence mode, full updates).
TINY = [
    "--config.total_env_steps=160",
    "--config.prefill_steps=64",
    "--config.schedule.warmup_steps=0",
    "--config.schedule.transition_steps=0",
    "--config.eval_every=0",
    "--config.log_every=80",
    "--config.report=False",
    "--config.diagnostics.open_loop_every=0",
    "--config.model.feature_dim=16",
    "--config.model.state_dim=8",
    "--config.model.hidden_dim=16",
    "--config.model.hidden_layers=1",
    "--config.batch_size=4",
    "--config.sequence_length=8",
    "--config.imagination.num_starts=16",
    "--config.imagination.horizon=5",
]


@pytest.mark.slow
def test_docs_command_trains_the_gated_model_and_the_snippet_loads_it(
    tmp_path, monkeypatch, capsys
):
    (block,) = [b for b in doc_blocks("bash") if "--config.model.dynamics=gated" in b]
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[:3] == ["python", "-m", "wm_jax.train"]
    assert "--workdir=runs/cartpole-gated" in argv
    workdir = str(tmp_path / "cartpole-gated")
    # absl keeps the last value of a repeated flag: the appended workdir and sizes win.
    cmd = [sys.executable, *argv[1:], f"--workdir={workdir}", *TINY]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained 160 env steps" in result.stdout

    # The load snippet, with its workdir pointed at this run.
    (snippet,) = [b for b in doc_blocks("python") if "load_policy" in b]
    monkeypatch.syspath_prepend(REPO)  # as `python` started in the repository root has it
    capsys.readouterr()
    exec(snippet.replace('"runs/cartpole-gated"', repr(workdir)), {})
    printed = capsys.readouterr().out.strip()
    assert printed == "['candidate', 'gate', 'std', 'trunk', 'trunk_norm']"
    with open(DOC) as f:
        assert f"prints `{printed}`" in f.read()

    # Without --config.imports the docs promise this message, before any env step.
    bare = [a for a in cmd if not a.startswith("--config.imports=")]
    bare.append(f"--workdir={tmp_path / 'bare'}")  # (the run's workdir refuses a changed config)
    result = subprocess.run(bare, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode != 0
    expected = (
        "config.model.dynamics='gated' is not registered; choose one of "
        "['ensemble', 'mlp', 'rssm', 'transformer'], "
        "or register yours with wm_jax.networks.register_dynamics() in a module named in "
        "--config.imports"
    )
    assert expected in result.stderr
    with open(DOC) as f:
        assert expected in f.read()


@pytest.mark.slow
def test_docs_library_snippet_trains_the_gated_model(tmp_path, monkeypatch):
    (snippet,) = [b for b in doc_blocks("python") if "wm_jax.train(" in b]
    monkeypatch.syspath_prepend(REPO)
    workdir = str(tmp_path / "lib")
    scope: dict = {}
    exec(snippet.replace('"runs/cartpole-gated-lib"', repr(workdir)), scope)
    assert scope["result"].env_steps == 1_000
    rows = [r for r in read_metrics(workdir) if "dynamics_loss" in r]
    assert rows and all(np.isfinite(r["dynamics_loss"]) for r in rows)
    with open(os.path.join(workdir, "config.json")) as f:
        assert '"dynamics": "gated"' in f.read()
