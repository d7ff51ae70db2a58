"""The public Python API: every name imports, and a trained agent round-trips through a
checkpoint and an exported bundle acting exactly like the in-memory one."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import small_config

import wm_jax
from wm_jax.metrics import read_metrics


def test_every_public_name_imports_and_is_documented():
    assert wm_jax.__all__, "empty public API"
    for name in wm_jax.__all__:
        value = getattr(wm_jax, name)
        doc = value.__doc__ or ""
        # (a dataclass without a docstring gets its signature as one)
        assert doc and not doc.startswith(f"{value.__name__}("), f"wm_jax.{name} is undocumented"
    with pytest.raises(AttributeError):
        wm_jax.no_such_name  # noqa: B018


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A few hundred env steps through the same loop as the CLI, kept open in memory."""
    workdir = tmp_path_factory.mktemp("api") / "run"
    c = small_config(
        total_env_steps=192,
        prefill_steps=64,
        eval_every=0,
        log_every=64,
        checkpoint_every=96,
        report=False,
        **{"schedule.warmup_steps": 96, "schedule.transition_steps": 128},
        **{"diagnostics.open_loop_every": 0},
    )
    trainer = wm_jax.Trainer(c, str(workdir))
    trainer.run()
    yield trainer, workdir
    trainer.close()


def in_memory_actions(trainer, obs, key, deterministic):
    mean, std = trainer.normalizer.stats()
    actions, _ = trainer.act_fn(
        trainer.state.wm_params,
        trainer.state.actor_params,
        trainer.act_fn.initial_carry(obs.shape[0]),
        obs,
        mean,
        std,
        key,
        deterministic=deterministic,
    )
    return np.asarray(actions)


@pytest.mark.slow
def test_loaded_and_exported_policies_act_exactly_like_the_in_memory_agent(trained, tmp_path):
    trainer, workdir = trained
    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    key = jax.random.PRNGKey(5)
    loaded = wm_jax.load_policy(str(workdir))
    assert loaded.step == 192
    bundle = wm_jax.load_policy(wm_jax.export_policy(loaded, str(tmp_path / "bundle")))
    for policy in (loaded, bundle):
        for deterministic in (True, False):
            np.testing.assert_array_equal(
                policy.agent_actions(obs, key, deterministic),
                in_memory_actions(trainer, obs, key, deterministic),
            )
        # Env actions, batched and single; CartPole's Discrete(2) gives ints.
        batch = policy.act(obs)
        assert batch.shape == (32,) and batch.dtype == np.int64
        assert policy.act(obs[3]) == batch[3]
    with pytest.raises(ValueError, match="expected an observation of shape"):
        loaded.act(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="key="):
        loaded.act(obs, deterministic=False)
    # The bundle is self-contained: JSON + orbax arrays, no pickle files.
    meta = json.loads((tmp_path / "bundle" / "policy.json").read_text())
    assert meta["spec"]["action_dim"] == 2 and meta["config"]["env_id"] == "CartPole-v1"
    assert not list((tmp_path / "bundle").rglob("*.pkl"))


@pytest.mark.slow
def test_a_named_checkpoint_step_loads_and_a_non_run_directory_is_refused(trained, tmp_path):
    _, workdir = trained
    assert wm_jax.load_policy(str(workdir), step=96).step == 96
    with pytest.raises(FileNotFoundError, match="neither an exported policy"):
        wm_jax.load_policy(str(tmp_path))


@pytest.mark.slow
def test_evaluate_cli_prints_the_return_and_writes_a_gif(trained):
    pytest.importorskip("pygame")  # classic-control rendering
    from PIL import Image

    _, workdir = trained
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "wm_jax.evaluate",
            f"--workdir={workdir}",
            "--episodes=3",
            "--gif=episode.gif",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "checkpoint 192: return" in out.stdout and "over 3 episodes" in out.stdout
    with Image.open(workdir / "episode.gif") as gif:
        assert gif.n_frames > 5 and gif.size == (600, 400)


@pytest.mark.slow
def test_evaluate_policy_matches_the_trainers_evaluation(trained):
    trainer, _ = trained
    from wm_jax.trainer import evaluate

    policy = wm_jax.load_policy(str(trained[1]))
    mean, std, returns = wm_jax.evaluate_policy(policy, episodes=3, seed=11)
    assert len(returns) == 3
    ref = evaluate(trainer.config, trainer.act_fn, trainer.state, trainer.normalizer, 3, seed=11)
    assert (mean, std) == pytest.approx(ref[:2])


@pytest.mark.slow
def test_evaluating_on_an_env_with_other_spaces_a_missing_step_or_no_episodes_says_so(trained):
    workdir = str(trained[1])
    policy = wm_jax.load_policy(workdir)
    with pytest.raises(ValueError, match=r"on Acrobot-v1: .*\(6,\).*differ from the policy's"):
        wm_jax.evaluate_policy(policy, episodes=1, env_id="Acrobot-v1")
    with pytest.raises(ValueError, match="episodes must be at least 1, got 0"):
        wm_jax.evaluate_policy(policy, episodes=0)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 7 .*has steps \[.*192\]"):
        wm_jax.load_policy(workdir, step=7)


# -- loading never runs code named in a run's files (wm_jax.safe_load) --------------------------


def _crafted_run(workdir, tmp_path, name, **config_changes):
    """A copy of a real run whose config.json is edited as an attacker would, beside a module
    ``name`` that writes a marker file when imported."""
    import shutil

    crafted = tmp_path / "crafted"
    shutil.copytree(workdir, crafted)
    marker = tmp_path / f"{name}.ran"
    (crafted / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    config = json.loads((crafted / "config.json").read_text())
    config.update(config_changes)
    (crafted / "config.json").write_text(json.dumps(config))
    return crafted, marker


@pytest.mark.slow
def test_load_policy_refuses_modules_a_run_or_bundle_names_and_imports_only_allowed_ones(
    trained, tmp_path, monkeypatch
):
    crafted, marker = _crafted_run(trained[1], tmp_path, "pwned_imports", imports="pwned_imports")
    monkeypatch.syspath_prepend(str(crafted))  # as if Python were started in the run directory
    monkeypatch.chdir(crafted)
    with pytest.raises(wm_jax.UntrustedImportError, match="allow_imports=\\['pwned_imports'\\]"):
        wm_jax.load_policy(str(crafted))
    bundle = tmp_path / "bundle"
    wm_jax.export_policy(wm_jax.load_policy(str(trained[1])), str(bundle))
    meta = json.loads((bundle / "policy.json").read_text())
    meta["config"]["imports"] = "pwned_imports"
    (bundle / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(wm_jax.UntrustedImportError, match="policy.json"):
        wm_jax.load_policy(str(bundle))
    assert not marker.exists() and "pwned_imports" not in sys.modules
    # Allowed by name, the module is imported (the check is the only gate).
    monkeypatch.delitem(sys.modules, "pwned_imports", raising=False)
    assert wm_jax.load_policy(str(crafted), allow_imports="pwned_imports").step == 192
    assert marker.exists()
    sys.modules.pop("pwned_imports", None)


@pytest.mark.slow
def test_evaluating_a_loaded_policy_never_imports_the_module_of_its_env_id(
    trained, tmp_path, monkeypatch
):
    crafted, marker = _crafted_run(trained[1], tmp_path, "pwned_env", env_id="pwned_env:Evil-v0")
    monkeypatch.syspath_prepend(str(crafted))
    policy = wm_jax.load_policy(str(crafted))  # acting needs no env: loads
    with pytest.raises(wm_jax.UntrustedImportError, match="--allow_imports=pwned_env"):
        wm_jax.evaluate_policy(policy, episodes=1)
    with pytest.raises(wm_jax.UntrustedImportError):
        wm_jax.record_episode(policy, str(tmp_path / "x.gif"))
    assert not marker.exists()
    # An env id the caller passes is the caller's choice.
    mean, _, _ = wm_jax.evaluate_policy(policy, episodes=1, env_id="CartPole-v1")
    assert mean >= 1
    # The evaluate CLI, started inside the crafted run directory: refused, nothing ran.
    result = subprocess.run(
        [sys.executable, "-m", "wm_jax.evaluate", f"--workdir={crafted}", "--episodes=1"],
        capture_output=True,
        text=True,
        cwd=crafted,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "--allow_imports=pwned_env" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_offline_training_refuses_the_env_module_a_dataset_run_names(
    trained, tmp_path, monkeypatch
):
    from wm_jax.offline import OfflineTrainer

    crafted, marker = _crafted_run(trained[1], tmp_path, "pwned_ds", env_id="pwned_ds:Evil-v0")
    monkeypatch.syspath_prepend(str(crafted))
    config = small_config(report=False)
    with pytest.raises(wm_jax.UntrustedImportError, match="allow_imports"):
        OfflineTrainer(config, str(tmp_path / "offline"), f"run:{crafted}")
    assert not marker.exists()
    assert not (tmp_path / "offline").exists()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A run through warmup and the full phase (its train step compiled ahead), evaluated
    every 32 env steps and checkpointed every 64: the trainer (closed), its result, its
    workdir."""
    workdir = tmp_path_factory.mktemp("evaluated") / "run"
    c = small_config(
        total_env_steps=128,
        prefill_steps=32,
        eval_every=32,
        eval_episodes=2,
        log_every=64,
        checkpoint_every=64,
        report=False,
        **{"schedule.warmup_steps": 64, "schedule.transition_steps": 96},
        **{"diagnostics.open_loop_every": 0},
    )
    trainer = wm_jax.Trainer(c, str(workdir))
    try:
        result = trainer.run()
    finally:
        trainer.close()
    return trainer, result, workdir


def test_a_run_compiles_one_acting_program_for_exploring_and_one_for_evaluating(evaluated):
    """jit keys its programs on where arguments are committed: a state that starts uncommitted
    and a carry that starts as numpy (both come back committed from their jitted calls) once
    cost each acting program two or three compilations in a run (warmup, then the full phase's
    train step compiled ahead; each evaluation's first step, then the rest)."""
    trainer, result, _ = evaluated
    assert [step for step, _, _ in result.eval_returns] == [32, 64, 96, 128]
    assert trainer.act_fn._fn._cache_size() == 2  # explore, evaluate


def test_a_run_keeps_its_best_evaluated_agent_loadable_with_which_best(evaluated, tmp_path):
    _, result, workdir = evaluated
    step, best, _ = max(result.eval_returns, key=lambda e: e[1])
    meta = json.loads((workdir / "best" / "policy.json").read_text())
    assert meta["eval_return"] == best and meta["step"] == step
    policy = wm_jax.load_policy(str(workdir), which="best")
    assert policy.step == step
    assert wm_jax.load_policy(str(workdir)).step == 128
    rows = [r for r in read_metrics(str(workdir)) if "eval_return_std" in r]
    for r in rows:  # the standard error of the mean over eval_episodes = 2
        assert r["eval_return_stderr"] == pytest.approx(r["eval_return_std"] / 2**0.5)
    with pytest.raises(FileNotFoundError, match="no best agent"):
        wm_jax.load_policy(str(tmp_path), which="best")


@pytest.mark.slow
def test_a_module_named_both_as_import_and_as_env_module_is_still_refused_at_load(
    trained, tmp_path, monkeypatch
):
    # The env's module is checked only when the env is made; the imports are checked at load
    # even when the same name appears in the env id.
    crafted, marker = _crafted_run(
        trained[1], tmp_path, "pwned_both", imports="pwned_both", env_id="pwned_both:Evil-v0"
    )
    monkeypatch.syspath_prepend(str(crafted))
    with pytest.raises(wm_jax.UntrustedImportError, match="config.imports"):
        wm_jax.load_policy(str(crafted))
    assert not marker.exists() and "pwned_both" not in sys.modules
