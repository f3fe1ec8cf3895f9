"""bitsandbytes' lines a person cannot act on stay out of Stamen's output, in an app that configures no logging."""

import subprocess
import sys

# In a fresh interpreter with no logging configured (as in an app using the edge API): the CPU path that warns at
# import (AVX512-BF16, its optional hub kernel unavailable) forced whatever CPU runs the test, then the 8-bit
# matmul's cast warning as bitsandbytes logs it on every call.
SCRIPT = """
import importlib, logging, sys
import stamen.shared
import bitsandbytes.backends.cpu.ops
import bitsandbytes.functional
bitsandbytes.functional.has_avx512bf16 = lambda: True
sys.modules["kernels"] = None  # the hub kernel cannot be loaded
importlib.reload(bitsandbytes.backends.cpu.ops)  # its import again, on the forced path
cast = logging.getLogger("bitsandbytes.autograd._functions")
for _ in range(5):
    cast.warning("MatMul8bitLt: inputs will be cast from %s to float16 during quantization", "torch.float32")
cast.warning("a warning bitsandbytes has not given before")
"""


def test_bitsandbytes_hub_kernel_notice_is_silent_and_its_per_matmul_warning_passes_once():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gemm_4bit_forward" not in result.stderr
    assert result.stderr.count("MatMul8bitLt: inputs will be cast") == 1
    assert "a warning bitsandbytes has not given before" in result.stderr  # other warnings still pass


def test_without_the_quieting_the_forced_path_does_warn():
    """The check above can fail: the same script without Stamen's quieting prints the lines it keeps out."""
    bare = SCRIPT.replace("import stamen.shared\n", "")
    result = subprocess.run([sys.executable, "-c", bare], capture_output=True, text=True, timeout=300)
    assert "gemm_4bit_forward" in result.stderr
    assert result.stderr.count("MatMul8bitLt: inputs will be cast") == 5
