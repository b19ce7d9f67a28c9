"""CSKV: the low-rank store against a plain PyTorch reference, RoPE against vLLM's own,
the calibration's bases against the definitions, the artifact's checks."""

from __future__ import annotations

import json

import pytest
import torch

from cache_policies.compress import cskv
from cache_policies.compress.cskv_calibrate import (
    Moments, calibrate, pca_basis, relative_error, weight_basis,
)
from cache_policies.compress.kivi import PackedFormat, pack_groups, unpack_groups
from cache_policies.registry import make_config, make_policy

LAYERS, HEADS, DIM, THETA = 2, 3, 64, 100000.0


def artifact(tmp_path, key_rank=32, value_rank=48, seed=0) -> cskv.Artifact:
    g = torch.Generator().manual_seed(seed)

    def basis(rank):
        q, _ = torch.linalg.qr(torch.randn(LAYERS, HEADS, DIM, DIM, generator=g))
        return q[..., :rank].contiguous()

    bases = {"key_basis": basis(key_rank), "key_mean": torch.randn(LAYERS, HEADS, DIM, generator=g),
             "value_basis": basis(value_rank),
             "value_mean": torch.randn(LAYERS, HEADS, DIM, generator=g)}
    cskv.save(tmp_path, bases, {"rope_theta": THETA, "key_rank": key_rank})
    return cskv.load(str(tmp_path))


def reference_rope(x: torch.Tensor, positions: list[int], inverse: bool = False):
    """Loop over positions and channel pairs (i, i + dim/2), the NeoX layout."""
    out = x.clone().double()
    half = x.shape[-1] // 2
    for t, pos in enumerate(positions):
        for i in range(half):
            angle = pos / THETA ** (2 * i / x.shape[-1])
            c, s = torch.tensor(angle).cos(), torch.tensor(angle).sin() * (-1 if inverse else 1)
            a, b = x[..., t, i].double(), x[..., t, i + half].double()
            out[..., t, i], out[..., t, i + half] = a * c - b * s, b * c + a * s
    return out.float()


def test_rope_matches_vllm_and_undoes_itself():
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.rotary_embedding import get_rope

    with set_current_vllm_config(VllmConfig()):  # a custom op: made under a config
        rope = get_rope(DIM, max_position=8192, is_neox_style=True,
                        rope_parameters={"rope_type": "default", "rope_theta": THETA},
                        dtype=torch.float32)
    keys = torch.randn(7, HEADS * DIM)
    positions = torch.tensor([0, 1, 5, 127, 128, 4000, 8191])
    _, rotated = rope.forward_native(positions, keys.clone(), keys.clone())
    rotated = rotated.view(7, HEADS, DIM).transpose(0, 1)  # (heads, n, dim)
    plain = keys.view(7, HEADS, DIM).transpose(0, 1)
    for pos, i in zip(positions.tolist(), range(7)):
        cos, sin = cskv.rope_tables(pos, 1, DIM, THETA)
        mine = cskv.rotate(plain[:, i: i + 1], cos, sin)
        torch.testing.assert_close(mine, rotated[:, i: i + 1], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(cskv.rotate(mine, cos, -sin), plain[:, i: i + 1],
                                   atol=2e-5, rtol=1e-5)
    cos, sin = cskv.rope_tables(126, 4, DIM, THETA)
    want = reference_rope(plain[:, :4], [126, 127, 128, 129])
    torch.testing.assert_close(cskv.rotate(plain[:, :4], cos, sin), want, atol=1e-4, rtol=0)


def test_features_and_entries_equal_the_reference(tmp_path):
    art = artifact(tmp_path)
    g = torch.Generator().manual_seed(1)
    first, n, layer = 256, 16, 1
    positions = list(range(first, first + n))
    plain_keys = torch.randn(HEADS, n, DIM, generator=g)
    keys = reference_rope(plain_keys, positions)  # as vLLM's cache holds them
    values = torch.randn(HEADS, n, DIM, generator=g)
    kf, vf = art.features(layer, keys, values, first)
    assert kf.shape == (HEADS, n, 32) and vf.shape == (HEADS, n, 48)
    got_k, got_v = art.entries(layer, kf, vf, first)
    for h in range(HEADS):  # reference: m + P P^T (x - m), keys around their un-rotation
        pk, mk = art.key_basis[layer, h], art.key_mean[layer, h]
        pv, mv = art.value_basis[layer, h], art.value_mean[layer, h]
        torch.testing.assert_close(kf[h], (plain_keys[h] - mk) @ pk, atol=1e-4, rtol=0)
        want_k = reference_rope((mk + (plain_keys[h] - mk) @ pk @ pk.T).unsqueeze(0), positions)
        torch.testing.assert_close(got_k[h], want_k[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(got_v[h], mv + (values[h] - mv) @ pv @ pv.T, atol=1e-4, rtol=0)


def test_full_rank_is_lossless_and_packing_keeps_the_features(tmp_path):
    art = artifact(tmp_path, key_rank=64, value_rank=64)
    keys, values = torch.randn(HEADS, 256, DIM), torch.randn(HEADS, 256, DIM)
    k, v = art.entries(0, *art.features(0, keys, values, 128), 128)
    torch.testing.assert_close(k, keys, atol=1e-4, rtol=0)
    torch.testing.assert_close(v, values, atol=1e-4, rtol=0)
    for bits, tol in ((16, 2e-2), (8, 5e-2), (4, 0.5)):  # bf16: 8 bits of mantissa
        fmt = PackedFormat(bits, 32, 128, value_dim=48)
        kf, vf = torch.randn(HEADS, 256, 32), torch.randn(HEADS, 256, 48)
        packed = pack_groups(kf, vf, fmt)
        assert packed.shape == (HEADS, 2, fmt.group_bytes)
        got_k, got_v = unpack_groups(packed, fmt)
        assert (got_k - kf).abs().max() < tol and (got_v - vf).abs().max() < tol


def test_bytes_per_group():
    assert PackedFormat(16, 32, 128, value_dim=64).group_bytes == 2 * 128 * (32 + 64)
    fmt = PackedFormat(8, 32, 128, value_dim=64)  # scales: keys per channel, values per token
    assert fmt.group_bytes == 128 * (32 + 64) + 2 * 2 * (32 + 128)
    assert fmt.bits_per_entry(64) == pytest.approx(8 * fmt.group_bytes / (2 * 128 * 64))
    assert PackedFormat(4, 64, 128).group_bytes == PackedFormat(4, 64, 128, 64).group_bytes


def test_pca_minimises_the_reconstruction_error():
    g = torch.Generator().manual_seed(2)
    mixing = torch.randn(DIM, DIM, generator=g) * torch.logspace(0, -2, DIM).unsqueeze(0)
    x = torch.randn(4000, 1, DIM, generator=g) @ mixing + 3.0  # correlated, off-centre
    m = Moments(1, 1, DIM)
    m.add(0, x)
    pca = pca_basis(m.covariance(), 16)
    centred = (x[:, 0] - x[:, 0].mean(0)).double()
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # the definition
    direct = vh[:16].T
    torch.testing.assert_close(pca[0, 0] @ pca[0, 0].T, direct @ direct.T, atol=1e-6, rtol=0)
    error = relative_error(m, pca, m.mean())[0]
    rebuilt = x[:, 0].double().mean(0) + centred @ direct @ direct.T
    want = ((x[:, 0].double() - rebuilt) ** 2).sum() / (x.double() ** 2).sum()
    assert error == pytest.approx(float(want), rel=1e-6)
    others = [torch.linalg.qr(torch.randn(DIM, 16, generator=g, dtype=torch.float64))[0]
              for _ in range(3)]
    for other in others:  # Eckart-Young: no other rank-16 basis does better
        assert relative_error(m, other.view(1, 1, DIM, 16), m.mean())[0] > error


def test_weight_basis_is_each_heads_singular_vectors():
    w = torch.randn(HEADS * DIM, 576)
    basis = weight_basis(w, HEADS, 8)
    for h in range(HEADS):
        u, _, _ = torch.linalg.svd(w[h * DIM:(h + 1) * DIM].double())
        torch.testing.assert_close(basis[h] @ basis[h].T, u[:, :8] @ u[:, :8].T, atol=1e-8, rtol=0)


def test_calibrating_the_default_model(tmp_path):
    from server.model_store import prepare

    meta = calibrate(prepare()[0], tmp_path, 32, 48, tokens=2048, seq_len=512)
    art = cskv.load(str(tmp_path))
    assert art.shape == (30, 3, 64) and art.ranks == (32, 48)
    eye = torch.eye(32)
    torch.testing.assert_close(art.key_basis.transpose(-1, -2) @ art.key_basis,
                               eye.expand(30, 3, 32, 32), atol=1e-4, rtol=0)
    keys = meta["relative_error"]["key"]
    pca, svd = keys["pca"]["calibration"], keys["svd"]["calibration"]
    assert all(p <= s + 1e-9 for p, s in zip(pca, svd))  # the refinement never loses
    assert sum(keys["pca"]["held_out"]) / 30 < 0.1  # keys are low-rank (2% at rank 32)
    assert meta["calibration"]["held_out_tokens"] > 0 and meta["rope_theta"] == THETA
    with pytest.raises(ValueError, match="multiple of 8"):
        calibrate(prepare()[0], tmp_path / "bad", 30)


def test_policies_need_an_artifact_and_take_no_budget(tmp_path, monkeypatch):
    monkeypatch.delenv(cskv.ENV, raising=False)
    with pytest.raises(ValueError, match="--cskv"):
        make_config("cskv8")
    artifact(tmp_path)
    monkeypatch.setenv(cskv.ENV, str(tmp_path))
    policy = make_policy(make_config("cskv4"))
    fmt = policy.format(64, 128)
    assert (fmt.bits, fmt.head_dim, fmt.value_channels) == (4, 32, 48)
    with pytest.raises(ValueError, match="takes no budget"):
        make_config("cskv", 0.5)


def test_a_bad_artifact_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="calibrate cskv"):
        cskv.load(str(tmp_path / "missing"))
    artifact(tmp_path)
    meta = json.loads((tmp_path / cskv.META).read_text())
    (tmp_path / cskv.META).write_text(json.dumps({**meta, "format_version": 99}))
    cskv.load.cache_clear()
    with pytest.raises(ValueError, match="format_version"):
        cskv.load(str(tmp_path))
    with pytest.raises(ValueError, match=r"\(2, 3, 64\)"):
        artifact(tmp_path / "ok").check_model(30, 3, 64)


def test_a_stream_appended_in_parts_reads_back_at_its_positions(tmp_path, monkeypatch):
    """The runtime packs a request's groups as they age and reads the stream back from
    the first position after any pinned prefix: features carry no position, so the
    positions given to `pack` and `unpack` are what put RoPE back right."""
    artifact(tmp_path, key_rank=64, value_rank=64)
    monkeypatch.setenv(cskv.ENV, str(tmp_path))
    policy = make_policy(make_config("cskv"))
    fmt = policy.format(DIM, 16)
    plain, values = torch.randn(HEADS, 64, DIM), torch.randn(HEADS, 64, DIM)
    keys = reference_rope(plain, list(range(32, 96)))  # after a pinned prefix of 32
    stream = torch.cat([policy.pack(keys[:, :32], values[:, :32], fmt, 1, 32),
                        policy.pack(keys[:, 32:], values[:, 32:], fmt, 1, 64)], dim=1)
    got_k, got_v = policy.unpack(stream, fmt, 1, 32)
    torch.testing.assert_close(got_k, keys, atol=3e-2, rtol=0)  # bf16 features
    torch.testing.assert_close(got_v, values, atol=3e-2, rtol=0)
    wrong, _ = policy.unpack(stream, fmt, 1, 0)
    assert (wrong - keys).abs().max() > 0.5


def test_command_line_and_settings_refuse_what_cannot_work(tmp_path, monkeypatch, capsys):
    from pydantic import ValidationError

    from server.cli import main
    from server.settings import Settings

    assert main(["calibrate", "cskv", "--rank", "30", "--out", str(tmp_path)]) == 2
    assert "multiple of 8" in capsys.readouterr().err
    monkeypatch.setenv(cskv.ENV, "")  # undone after the test, whatever Settings sets
    with pytest.raises(ValidationError, match="--cskv"):
        Settings(kv_policy="cskv8")
    with pytest.raises(ValidationError, match="calibrate cskv"):
        Settings(cskv=str(tmp_path / "none"))
    artifact(tmp_path / "bases")
    assert Settings(kv_policy="cskv8", cskv=str(tmp_path / "bases")).kv_policy == "cskv8"
