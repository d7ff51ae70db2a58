"""Kept benchmark results (issue 23): ``save_result`` writes where/how a figure was measured and
never overwrites a kept file, every benchmark that prints a JSON summary keeps it, and the
committed files follow the layout ``experiments/results/<benchmark>/<UTC date>-<cpu>...``."""

from __future__ import annotations

import ast
import datetime
import glob
import importlib.util
import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "experiments", "benchmarks")
RESULTS = os.path.join(ROOT, "experiments", "results")
SCRIPTS = sorted(
    p for p in glob.glob(os.path.join(BENCHMARKS, "*.py")) if os.path.basename(p) != "common.py"
)


def _common():
    # One copy per process: the module defines the absl flag --results_dir.
    name = "wm_jax_benchmarks_common"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, "common.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_save_result_records_provenance(tmp_path):
    common = _common()
    path = common.save_result(
        "tiny", {"x": 1.5, "versions": {"gymnasium": "9.9"}}, results_dir=str(tmp_path)
    )
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    slug = common.machine_slug(common.cpu_model())
    assert path == str(tmp_path / "tiny" / f"{today}-{slug}.json")
    with open(path) as f:
        record = json.load(f)
    assert record["x"] == 1.5 and record["benchmark"] == "tiny"
    assert record["cpu"] == common.cpu_model() and record["cpu"]
    assert record["date_utc"].startswith(today)
    assert isinstance(record["command"], str) and record["command"].startswith("python ")
    assert set(record["device"]) == {"platform", "kind"}
    for package in ("python", "jax", "jaxlib", "flax", "optax", "numpy"):
        assert record["versions"][package], package
    assert record["versions"]["gymnasium"] == "9.9"  # a summary's own versions are kept
    assert os.path.getsize(path) < 4096


def test_save_result_never_overwrites_and_copies_the_figure(tmp_path):
    common = _common()
    figure = tmp_path / "fig.png"
    figure.write_bytes(b"\x89PNG not really")
    first = common.save_result("b", {"run": 1}, results_dir=str(tmp_path))
    second = common.save_result("b", {"run": 2}, figure=str(figure), results_dir=str(tmp_path))
    third = common.save_result("b", {"run": 3}, results_dir=str(tmp_path))
    stem = first[: -len(".json")]
    assert (second, third) == (stem + "-2.json", stem + "-3.json")
    assert [json.load(open(p))["run"] for p in (first, second, third)] == [1, 2, 3]
    assert open(stem + "-2.png", "rb").read() == figure.read_bytes()
    assert not os.path.exists(stem + ".png")
    # A figure never lands on another run's PNG either: that name is skipped too.
    os.remove(third)
    open(stem + "-3.png", "wb").close()
    fourth = common.save_result("b", {"run": 4}, figure=str(figure), results_dir=str(tmp_path))
    assert fourth == stem + "-4.json"


def test_save_result_empty_dir_keeps_nothing(tmp_path):
    common = _common()
    assert common.save_result("b", {}, results_dir="") is None
    assert common.RESULTS.default == RESULTS


def test_machine_slug():
    slug = _common().machine_slug
    assert slug("Intel(R) Xeon(R) Processor") == "intel-xeon-processor"
    assert slug("Intel(R) Xeon(R) CPU @ 2.20GHz") == "intel-xeon-cpu"
    assert slug("AMD EPYC 7B13 64-Core Processor") == "amd-epyc-7b13-64-core-processor"
    assert slug("") == "unknown-cpu"
    assert re.fullmatch(r"[a-z0-9-]{1,48}", slug("x/" * 100))


def _why_not_kept(path: str) -> str | None:
    """Why a benchmark script that prints a JSON summary does not keep it, or None: ``main``
    must call ``save_result("<script name>", ...)`` before its last print, with ``figure=``
    when the script draws one."""
    with open(path) as f:
        source = f.read()
    if "json.dumps" not in source:
        return None  # prints no JSON summary
    tree = ast.parse(source)
    main = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"), None)
    if main is None:
        return "no main()"
    calls = [n for n in ast.walk(main) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    saves = [c for c in calls if c.func.id == "save_result"]
    prints = [c for c in calls if c.func.id == "print"]
    if not saves:
        return "main() does not call save_result"
    name = os.path.splitext(os.path.basename(path))[0]
    if not any(isinstance(c.args[0], ast.Constant) and c.args[0].value == name for c in saves):
        return f"save_result's benchmark is not {name!r}"
    if prints and max(c.lineno for c in prints) < min(c.lineno for c in saves):
        return "save_result comes after the last print (the JSON line must stay last)"
    if "savefig" in source and not any(k.arg == "figure" for c in saves for k in c.keywords):
        return "draws a figure but does not keep it (figure=)"
    return None


def test_the_check_finds_a_benchmark_that_keeps_nothing(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text("import json\n\n\ndef main(argv):\n    print(json.dumps({}))\n")
    assert _why_not_kept(str(script)) == "main() does not call save_result"
    body = "    save_result('other', {})\n    print(json.dumps({}))\n"
    script.write_text("import json\n\n\ndef main(argv):\n" + body)
    assert "not 'bench'" in _why_not_kept(str(script))


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_every_benchmark_keeps_its_summary(path):
    assert _why_not_kept(path) is None


def test_the_benchmarks_are_found():
    names = {os.path.basename(p) for p in SCRIPTS}
    assert {"update_throughput.py", "learning.py", "soak.py", "device_loop.py"} <= names


def test_committed_results_follow_the_layout():
    benchmarks = {os.path.splitext(os.path.basename(p))[0] for p in SCRIPTS}
    files = [
        os.path.relpath(os.path.join(d, f), RESULTS)
        for d, _, fs in os.walk(RESULTS)
        for f in fs
        if f != "README.md"
    ]
    assert files
    for rel in files:
        benchmark, _, name = rel.partition(os.sep)
        assert benchmark in benchmarks, rel
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-[a-z0-9-]+\.(json|png)", name), rel
        if name.endswith(".json"):
            with open(os.path.join(RESULTS, rel)) as f:
                json.load(f)
            assert os.path.getsize(os.path.join(RESULTS, rel)) < 64 * 1024, rel
        else:
            assert os.path.exists(os.path.join(RESULTS, rel[: -len(".png")] + ".json")), rel


def cited_results(text: str) -> list[str]:
    """``experiments/results/...`` file paths in a document, ``{a,b}`` expanded."""
    paths = []
    for ref in re.findall(r"experiments/results/[\w./{},-]*\.(?:json|png)", text):
        m = re.search(r"\{([^}]*)\}", ref)
        options = m[1].split(",") if m else [""]
        paths += [ref[: m.start()] + o + ref[m.end() :] if m else ref for o in options]
    return paths


def test_the_citation_reader_expands_braces():
    text = "see `experiments/results/a/2026-01-01-x-{cold,warm}.json` and experiments/results/"
    assert cited_results(text) == [
        "experiments/results/a/2026-01-01-x-cold.json",
        "experiments/results/a/2026-01-01-x-warm.json",
    ]


def test_every_result_cited_in_the_docs_is_committed():
    docs = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "BUILD_NOTES.md")]
    docs += glob.glob(os.path.join(ROOT, "docs", "*.md"))
    cited, missing = 0, []
    for doc in docs:
        with open(doc) as f:
            for path in cited_results(f.read()):
                cited += 1
                if not os.path.isfile(os.path.join(ROOT, path)):
                    missing.append(f"{os.path.basename(doc)}: {path}")
    assert cited >= 8  # BUILD_NOTES' own citations are read
    assert not missing, missing


def test_sb3_baselines_are_checked_against_the_task_before_anything_runs():
    common = _common()
    assert common.sb3_agents_for("CartPole-v1", ["auto"]) == ["dqn", "ppo"]
    assert common.sb3_agents_for("Pendulum-v1", ["auto"]) == ["sac"]
    assert common.sb3_agents_for("CartPole-v1", ["ppo"]) == ["ppo"]
    with pytest.raises(ValueError, match="CartPole-v1 has dqn, ppo"):
        common.sb3_agents_for("CartPole-v1", ["sac"])
    with pytest.raises(ValueError, match="Acrobot-v1 has none"):
        common.sb3_agents_for("Acrobot-v1", ["auto"])


def test_learning_benchmark_refuses_a_baseline_the_task_has_no_hyperparameters_for(tmp_path):
    import subprocess

    workdir = tmp_path / "bench"
    cmd = [
        sys.executable,
        os.path.join(BENCHMARKS, "learning.py"),
        "--config=experiments/configs/pendulum.py",
        "--baselines=dqn",
        f"--workdir={workdir}",
        "--results_dir=",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode != 0
    assert "no rl-zoo hyperparameters for ['dqn'] on Pendulum-v1" in result.stderr
    assert not workdir.exists()  # refused before any training


@pytest.mark.skipif(
    importlib.util.find_spec("stable_baselines3") is None, reason="needs the bench extra"
)
def test_an_sb3_baseline_run_reports_each_evaluation_on_the_given_protocol(tmp_path):
    import glob
    import tempfile

    litter = os.path.join(tempfile.gettempdir(), "SB3-*")
    before = set(glob.glob(litter))
    rows = _common().run_sb3(
        "dqn",
        0,
        ["--env_id=CartPole-v1", "--eval_every=600", "--eval_episodes=1", "--max_env_steps=1200"],
        str(tmp_path / "dqn.log"),
    )
    evals = [r for r in rows if r["event"] == "eval"]
    assert [r["env_step"] for r in evals] == [600, 1200]
    assert all(r["eval_return"] >= 8 for r in evals)  # CartPole lasts ≥ 8 steps under any policy
    assert rows[-1]["event"] == "end" and rows[-1]["env_step"] >= 1200
    assert set(glob.glob(litter)) == before  # no SB3 log folder left in the temp dir
