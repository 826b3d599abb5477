"""Every compiled (numba) function of the pipelines states its fastmath flag.

numba compiles a callee that does not set fastmath with its CALLER's flags, and caches that
version on disk for later processes. FFCV compiles its pipeline with fastmath=True, so an
unflagged function called from the FFCV op would be free to reorder and contract the float
arithmetic the twin tests pin down, and which version a process gets would depend on which
one compiled it first.
"""
import pytest

pytest.importorskip("numba", reason="numba is not installed")

from pipelines.photometric import cpu_kernel  # noqa: E402
from pipelines.sampling import compiled_draw  # noqa: E402
from pipelines.ffcv_backend import resample  # noqa: E402

# the one deliberate exception: a reassociated (not contracted) luma sum, within tolerance
ALLOWED = {"_luma_sum": {"reassoc", "nsz"}}


@pytest.mark.parametrize("module", [compiled_draw, cpu_kernel, resample],
                         ids=lambda m: m.__name__)
def test_every_compiled_function_states_fastmath(module):
    dispatchers = [v for v in vars(module).values() if hasattr(v, "targetoptions")]
    assert len(dispatchers) >= 5
    for d in dispatchers:
        name = d.py_func.__name__
        flag = d.targetoptions.get("fastmath")
        want = ALLOWED.get(name, False)
        assert flag == want or (isinstance(flag, (set, dict)) and set(flag) == want), \
            f"{module.__name__}.{name}: fastmath={flag!r}"
