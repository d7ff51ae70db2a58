"""The launchers' allocator (wm_jax/_allocator.py): mimalloc preloaded where its wheel is installed,
glibc's tunables otherwise; applied once by re-executing, only on Linux glibc, never over the
user's own choice or with the opt-out variable."""

import os
import platform
import subprocess
import sys

import pytest

from wm_jax import _allocator

PROBE = (
    "import os; from wm_jax import _allocator; _allocator.tune(); "
    "maps = open('/proc/self/maps').read() if os.path.exists('/proc/self/maps') else ''; "
    "print(repr(os.environ.get('GLIBC_TUNABLES')), os.environ.get('WM_JAX_ALLOCATOR_TUNED'), "
    "'libmimalloc' in maps, os.environ.get('MIMALLOC_PURGE_DELAY'))"
)
glibc_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the settings are glibc's",
)
ENV_KEYS = ("GLIBC_TUNABLES", "LD_PRELOAD", _allocator.CHOICE, *_allocator.MIMALLOC_OPTIONS)


def _run(**env):
    base = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    base.pop(_allocator.OPT_OUT, None)
    base.pop(_allocator.MARKER, None)
    base.update(env)
    return subprocess.run([sys.executable, "-c", PROBE], env=base, capture_output=True, text=True)


def _out(**env):
    done = _run(**env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@glibc_linux
def test_launcher_reexecutes_once_into_mimalloc_that_keeps_freed_memory():
    if _allocator.mimalloc_library() is None:
        pytest.fail("cmeel-mimalloc is a Linux dependency of wm_jax: pip install -e .")
    assert _out() == "None 1 True -1"


@glibc_linux
def test_glibc_choice_reexecutes_with_the_malloc_tunables_and_keeps_other_tunables():
    assert _out(WM_JAX_ALLOCATOR="glibc") == f"{_allocator.TUNABLES!r} 1 False None"
    assert _out(WM_JAX_ALLOCATOR="glibc", GLIBC_TUNABLES="glibc.pthread.rseq=0") == (
        f"{'glibc.pthread.rseq=0:' + _allocator.TUNABLES!r} 1 False None"
    )


def test_without_mimalloc_the_glibc_tunables_are_the_fallback():
    env = _allocator.tuned_environment({}, find_mimalloc=lambda: None)
    if env is None:  # not Linux glibc: nothing to tune
        assert not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"
        return
    assert env["GLIBC_TUNABLES"] == _allocator.TUNABLES and "LD_PRELOAD" not in env


@glibc_linux
def test_a_preloaded_library_is_kept_after_mimalloc_and_user_options_win():
    env = _allocator.tuned_environment(
        {"LD_PRELOAD": "/opt/libfoo.so", "MIMALLOC_PURGE_DELAY": "100"},
        find_mimalloc=lambda: "/x/libmimalloc.so",
    )
    assert env["LD_PRELOAD"] == "/x/libmimalloc.so:/opt/libfoo.so"
    assert env["MIMALLOC_PURGE_DELAY"] == "100"


def test_user_allocator_choices_and_the_opt_out_are_respected():
    assert _out(GLIBC_TUNABLES="glibc.malloc.hugetlb=1") == (
        "'glibc.malloc.hugetlb=1' None False None"
    )
    assert _out(WM_JAX_NO_ALLOCATOR_TUNING="1") == "None None False None"
    for preload in ("/usr/lib/libjemalloc.so.2", "/usr/lib/libtcmalloc_minimal.so.4"):
        assert _allocator.tuned_environment({"LD_PRELOAD": preload}) is None


def test_an_unknown_allocator_choice_is_a_one_line_error():
    done = _run(WM_JAX_ALLOCATOR="jemalloc")
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert done.returncode == 1
        assert "WM_JAX_ALLOCATOR='jemalloc': choose mimalloc or glibc" in done.stderr
        assert "Traceback" not in done.stderr


def test_tuned_environment_is_none_once_marked():
    assert _allocator.tuned_environment({_allocator.MARKER: "1"}) is None


def test_describe_names_the_allocator_a_benchmark_ran_on():
    assert _allocator.describe(
        {"LD_PRELOAD": "/x/libmimalloc.so", "MIMALLOC_PURGE_DELAY": "-1"}
    ) == ("mimalloc (MIMALLOC_PURGE_DELAY=-1)")
    assert _allocator.describe({"GLIBC_TUNABLES": _allocator.TUNABLES}) == (
        f"glibc ({_allocator.TUNABLES})"
    )
    assert _allocator.describe({}) == "default malloc"
