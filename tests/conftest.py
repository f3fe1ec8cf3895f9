"""Shared fixtures: a hermetic cache and tiny Llama bases built from a config (seconds, no hub)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.database import DirectoryBasedExampleDatabase

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
# Hypothesis keeps its examples and caches out of the working tree
_HYPOTHESIS_HOME = Path(tempfile.mkdtemp(prefix="stamen-hypothesis-"))
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
settings.register_profile("hermetic", database=DirectoryBasedExampleDatabase(_HYPOTHESIS_HOME / "examples"))
settings.load_profile("hermetic")

_ROOT = Path(__file__).resolve().parents[1]
_ROOT_BEFORE = set(os.listdir(_ROOT))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Tests write only under their temporary folders: a new entry in the checkout fails the session."""
    written = sorted(set(os.listdir(_ROOT)) - _ROOT_BEFORE - {".pytest_cache"})
    if written:
        print(f"\nthe tests wrote into the working tree: {', '.join(written)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def stamen_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every derived file of the test session goes to a fresh folder."""
    path = tmp_path_factory.mktemp("stamen-cache")
    os.environ["STAMEN_CACHE"] = str(path)
    return path


@pytest.fixture(autouse=True)
def fresh_client_runtime():
    """Each test starts without the process-wide loaded base and adapter an earlier test left behind."""
    from stamen.client.loaded_base import release_runtime

    release_runtime()
    yield
    release_runtime()


@pytest.fixture
def flower_task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages built outside a Flower process are stamped with a run, as the simulation engine sets up;
    the class attributes are restored after the test."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):  # behind the class's properties
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture(scope="session")
def tiny_folder(stamen_cache: Path) -> Path:
    from stamen.shared.base_source import resolve_base_folder

    return resolve_base_folder("tiny")


@pytest.fixture(scope="session")
def other_tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny base with different weights (another seed)."""
    from stamen.shared.tiny_model import build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("other-tiny"), seed=1)


def _packed_gemv_4bit(A, B, shapeB, absmax, code, blocksize):
    """What bitsandbytes' AVX512-BF16 CPU kernel computes on a repacked 4-bit weight, and as opaque to autograd
    as that native kernel: bf16 products, no graph back to ``A``."""
    import torch

    rows, columns = shapeB
    with torch.no_grad():
        packed = B.view(torch.uint8).reshape(-1, 32)  # 32 bytes: low nibbles then high nibbles of 64 values
        nibbles = torch.cat([packed & 0xF, packed >> 4], dim=-1)
        index = nibbles.reshape(rows // 32, columns // 2, 32, 2).transpose(1, 2).reshape(rows, columns)
        weight = code.float()[index.long()] * absmax.float().T.repeat_interleave(blocksize, dim=1)
        return (A.detach().to(torch.bfloat16).float() @ weight.to(torch.bfloat16).float().T).to(A.dtype)


@pytest.fixture
def avx512bf16_cpu(monkeypatch: pytest.MonkeyPatch):
    """bitsandbytes as it behaves on a CPU with AVX512-BF16, whatever CPU runs the test.

    4-bit layers built inside the test believe the CPU has AVX512-BF16, so bitsandbytes repacks their
    weights at the first inference-mode forward; where the CPU really has it the native kernel runs,
    elsewhere an equivalent kernel that autograd cannot see through, as the native one."""
    import bitsandbytes.functional
    import bitsandbytes.nn.modules
    import torch

    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)
    if bitsandbytes.functional.has_avx512bf16():
        yield "native"
        return
    library = torch.library.Library("bitsandbytes", "IMPL")
    library.impl("gemv_4bit", _packed_gemv_4bit, "CPU")
    try:
        yield "reproduced"
    finally:
        library._destroy()
