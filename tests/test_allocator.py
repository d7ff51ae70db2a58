"""The launchers' malloc settings (wm_jax/_allocator.py): applied once by re-executing, only on
Linux glibc, never over the user's own settings or with the opt-out variable."""

import os
import platform
import subprocess
import sys

import pytest

from wm_jax import _allocator

PROBE = (
    "import os; from wm_jax import _allocator; _allocator.tune(); "
    "print(repr(os.environ.get('GLIBC_TUNABLES')), os.environ.get('WM_JAX_ALLOCATOR_TUNED'))"
)
glibc_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the settings are glibc's",
)


def _run(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES",)}
    base.pop(_allocator.OPT_OUT, None)
    base.pop(_allocator.MARKER, None)
    base.update(env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=base, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


@glibc_linux
def test_launcher_reexecutes_once_with_the_malloc_settings():
    assert _run() == f"{_allocator.TUNABLES!r} 1"


@glibc_linux
def test_other_tunables_are_kept_and_extended():
    assert _run(GLIBC_TUNABLES="glibc.pthread.rseq=0") == (
        f"{'glibc.pthread.rseq=0:' + _allocator.TUNABLES!r} 1"
    )


def test_user_malloc_settings_and_the_opt_out_are_respected():
    assert _run(GLIBC_TUNABLES="glibc.malloc.hugetlb=1") == "'glibc.malloc.hugetlb=1' None"
    assert _run(WM_JAX_NO_ALLOCATOR_TUNING="1") == "None None"


def test_tuned_environment_is_none_once_marked():
    assert _allocator.tuned_environment({_allocator.MARKER: "1"}) is None
