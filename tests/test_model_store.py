"""`longserve models prepare`: idempotent, and a corrupted or partial cache is rebuilt."""

from __future__ import annotations

import json
import shutil

import pytest

from server import model_store


@pytest.fixture(scope="module")
def prepared():
    path, _ = model_store.prepare()  # the real default cache (built by the install step)
    return path


@pytest.fixture
def cache_copy(prepared, tmp_path):
    copy = tmp_path / "models" / model_store.DEFAULT_MODEL_NAME
    shutil.copytree(prepared, copy)
    return copy


def test_prepared_checkpoint_is_plain_bf16_llama(prepared):
    config = json.loads((prepared / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["dtype"] == "bfloat16" and "quantization_config" not in config
    assert (config["num_hidden_layers"], config["num_key_value_heads"], config["head_dim"]) == (
        30, 3, 64)
    assert (prepared / "model.safetensors").is_file()
    assert "im_start" in (prepared / "chat_template.jinja").read_text()
    assert model_store.verify(prepared, model_store.gguf_path()).ok


def test_second_prepare_does_nothing(cache_copy):
    mtimes = {p.name: p.stat().st_mtime_ns for p in cache_copy.iterdir()}
    path, built = model_store.prepare(cache_copy)
    assert (path, built) == (cache_copy, False)
    assert {p.name: p.stat().st_mtime_ns for p in cache_copy.iterdir()} == mtimes


def test_missing_manifest_means_partial(cache_copy):
    (cache_copy / model_store.MANIFEST).unlink()
    status = model_store.verify(cache_copy)
    assert not status.ok and "partial" in status.reason


def test_truncated_file_is_detected(cache_copy):
    with (cache_copy / "tokenizer.json").open("r+b") as f:
        f.truncate(100)
    status = model_store.verify(cache_copy)
    assert not status.ok and "truncated" in status.reason


def test_corrupted_weights_are_detected_and_rebuilt(cache_copy):
    weights = cache_copy / "model.safetensors"
    with weights.open("r+b") as f:  # same size, one byte flipped
        f.seek(weights.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    status = model_store.verify(cache_copy)
    assert not status.ok and "sha256" in status.reason
    path, built = model_store.prepare(cache_copy)
    assert built and model_store.verify(path).ok
    leftovers = list(cache_copy.parent.glob(f".{cache_copy.name}-*"))
    assert not leftovers  # no temporary build left behind
