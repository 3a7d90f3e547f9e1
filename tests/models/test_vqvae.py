"""VQ-VAE image tokenizer: shapes, straight-through gradients, EMA codebook, k-means init, dead-code restarts,
usage statistics, cosine lookup, checkpoints and codebook agreement across processes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from genloom.checkpoint import save_checkpoint
from genloom.config import config_from_dict, config_to_dict
from genloom.errors import GenloomError
from genloom.models.vq_colour import compose, value_and_chroma
from genloom.models.vqvae import PRESETS, VQVAE, VQConfig, preset
from genloom.nn.quantizer import VectorQuantizer, codebook_perplexity, kmeans_plus_plus
from genloom.registry import load_language_model, load_pretrained


def _tiny(**overrides) -> VQConfig:
    settings = dict(resolution=16, widths=(8, 16), res_blocks=1, norm_groups=4, codebook_size=16, code_dim=4)
    settings.update(overrides)
    return VQConfig(**settings)  # type: ignore[arg-type]


def _images(b: int = 4, r: int = 16) -> torch.Tensor:
    return torch.rand(b, 3, r, r) * 2 - 1


def _grid(vectors: list[list[float]]) -> torch.Tensor:
    """Vectors (N, D) as a (1, D, 1, N) grid, the quantizer's input layout."""
    return torch.tensor(vectors).T[None, :, None, :]


def _quantizer(codebook: list[list[float]], **overrides) -> VectorQuantizer:
    """A quantizer with a fixed codebook and consistent EMA state (one assignment per code)."""
    codes = torch.tensor(codebook)
    settings = dict(cosine=False, kmeans_iters=0, dead_code_steps=0)
    settings.update(overrides)
    vq = VectorQuantizer(codes.shape[0], codes.shape[1], **settings)  # type: ignore[arg-type]
    vq.codebook.copy_(codes)
    vq.embed_sum.copy_(codes)
    return vq


def test_presets_and_config_validation() -> None:
    for name, config in PRESETS.items():
        assert config.grid_size == config.resolution // 2**config.downsamplings, name
    assert preset("vq-small").grid_size == 8 and preset("vq-tiny").grid_size == 8 and preset("vq-digits").grid_size == 4
    # JSON turns the widths tuple into a list; loading turns it back.
    config = preset("vq-tiny", codebook_size=64)
    assert config_from_dict(VQConfig, config_to_dict(config) | {"widths": [16, 32, 32]}) == config
    with pytest.raises(GenloomError, match="unknown preset 'vq-huge'"):
        preset("vq-huge")
    with pytest.raises(ValueError, match=r"resolution \(30\) must be divisible by 4"):
        VQConfig(resolution=30, widths=(32, 32, 32), norm_groups=8)
    with pytest.raises(ValueError, match=r"norm_groups \(32\)"):
        VQConfig(widths=(16, 32, 32))
    with pytest.raises(ValueError, match=r"ema_decay \(1.0\)"):
        _tiny(ema_decay=1.0)
    with pytest.raises(ValueError, match=r"codebook_size \(0\)"):
        _tiny(codebook_size=0)


def test_encode_decode_and_forward_shapes() -> None:
    torch.manual_seed(0)
    model = VQVAE(_tiny()).eval()
    images = _images()
    assert model.grid_size == 8
    codes = model.encode(images)
    assert codes.shape == (4, 8, 8) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 16
    decoded = model.decode(codes)
    assert decoded.shape == (4, 3, 16, 16) and decoded.min() >= -1 and decoded.max() <= 1
    reconstruction, vq_loss, forward_codes = model(images)
    assert reconstruction.shape == (4, 3, 16, 16) and vq_loss.dim() == 0
    assert torch.equal(forward_codes, codes)
    torch.testing.assert_close(reconstruction.clamp(-1, 1), decoded)
    # Parameters only: the codebook is a buffer.
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    assert "quantizer.codebook" not in dict(model.named_parameters())
    with pytest.raises(GenloomError, match=r"expected images of shape \(B, 3, 16, 16\), got \(4, 3, 32, 32\)"):
        model.encode(_images(r=32))
    with pytest.raises(GenloomError, match=r"codes must be in \[0, 16\)"):
        model.decode(torch.full((1, 8, 8), 16))


def test_patch_encoder_codes_depend_only_on_their_own_patch() -> None:
    torch.manual_seed(0)
    model = VQVAE(_tiny(encoder="patch")).eval()  # 16x16 -> 8x8 codes of 2x2 patches
    images = _images(b=1)
    changed = images.clone()
    changed[:, :, :2, :2] = -images[:, :, :2, :2]  # only the top-left patch
    z, z_changed = model.encoder(images), model.encoder(changed)
    assert z.shape == (1, 4, 8, 8)
    assert not torch.allclose(z[..., 0, 0], z_changed[..., 0, 0])
    torch.testing.assert_close(z[..., 1:, :], z_changed[..., 1:, :])  # every other patch: the same vector
    torch.testing.assert_close(z[..., 0, 1:], z_changed[..., 0, 1:])
    # Equal patches anywhere in the image get equal codes.
    tiled = images[:, :, :2, :2].repeat(1, 1, 8, 8)
    assert model.encode(tiled).unique().numel() == 1
    # The convolutional encoder's codes see their neighbours.
    conv = VQVAE(_tiny()).eval()
    assert not torch.allclose(conv.encoder(images)[..., 0, 1], conv.encoder(changed)[..., 0, 1])
    reconstruction, _, _ = VQVAE(_tiny(encoder="patch"))(images)
    assert reconstruction.shape == images.shape
    with pytest.raises(ValueError, match="encoder"):
        _tiny(encoder="vit")


def _flat_colour_images() -> torch.Tensor:
    """(2, 3, 16, 16) in [-1, 1]: black, a red 4x4 block on the patch lattice, a dimmed green one, a blue corner."""
    unit = torch.zeros(2, 3, 16, 16)
    unit[0, 0, 4:8, 4:8] = 1.0  # red
    unit[0, 1, 8:12, 0:4] = 0.5  # green at half brightness
    unit[1, 2, 0:1, 14:16] = 1.0  # blue, two pixels of one patch
    return unit * 2 - 1


def test_value_and_chroma_split_flat_colours_exactly() -> None:
    images = _flat_colour_images()
    value, chroma = value_and_chroma(images, 4)
    assert value.shape == (2, 1, 16, 16) and chroma.shape == (2, 3, 4, 4)
    torch.testing.assert_close(chroma[0, :, 1, 1], torch.tensor([1.0, 0.0, 0.0]))  # the red block's patch
    torch.testing.assert_close(chroma[0, :, 2, 0], torch.tensor([0.0, 1.0, 0.0]))  # green whatever its brightness
    torch.testing.assert_close(chroma[1, :, 0, 3], torch.tensor([0.0, 0.0, 1.0]))  # a partly lit patch
    assert torch.count_nonzero(chroma[0, :, 0, 0]) == 0  # black patch: no colour
    # Brightness x patch colour gives the image back.
    torch.testing.assert_close(compose(value, F.interpolate(chroma, scale_factor=4, mode="nearest")), images)


def test_colour_factorised_tokens() -> None:
    torch.manual_seed(0)
    config = _tiny(resolution=16, widths=(8, 16, 16), encoder="patch", codebook_size=6, colour_codes=5)
    assert config.vocab_size == 30 and config.patch_size == 4
    model = VQVAE(config)
    images = _flat_colour_images()
    model.train()
    model(images)  # k-means initialises both codebooks
    model.eval()
    codes = model.encode(images)
    assert codes.shape == (2, 4, 4) and int(codes.max()) < 30
    shapes, colours = codes // 5, codes % 5
    # The shape code sees only brightness: the same lit block in another colour keeps its shape code.
    recoloured = images.clone()
    recoloured[0, :, 4:8, 4:8] = torch.tensor([-1.0, -1.0, 1.0])[:, None, None]  # the red block turned blue
    codes2 = model.encode(recoloured)
    assert int(codes2[0, 1, 1]) // 5 == int(shapes[0, 1, 1]) and int(codes2[0, 1, 1]) % 5 != int(colours[0, 1, 1])
    assert torch.equal(codes2[1], codes[1])
    reconstruction, vq_loss, forward_codes = model(images)
    assert torch.equal(forward_codes, codes) and vq_loss.dim() == 0
    torch.testing.assert_close(reconstruction.clamp(-1, 1), model.decode(codes))
    with pytest.raises(GenloomError, match=r"codes must be in \[0, 30\)"):
        model.decode(torch.full((1, 4, 4), 30))
    with pytest.raises(ValueError, match="colour_codes needs the patch encoder"):
        _tiny(colour_codes=4)
    with pytest.raises(ValueError, match=r"colour_codes \(-1\)"):
        _tiny(encoder="patch", colour_codes=-1)


def test_straight_through_gradient_reaches_the_encoder() -> None:
    vq = _quantizer([[0.0, 0.0], [10.0, 10.0]])
    z = _grid([[1.0, 0.0], [9.0, 9.0]]).requires_grad_()
    quantized, _, codes = vq(z)
    assert codes.flatten().tolist() == [0, 1]
    torch.testing.assert_close(quantized, _grid([[0.0, 0.0], [10.0, 10.0]]))  # forward: the codes
    weights = torch.randn_like(quantized)
    (quantized * weights).sum().backward()
    torch.testing.assert_close(z.grad, weights)  # backward: identity
    # Through the whole model, a pure reconstruction loss trains the encoder's first layer.
    torch.manual_seed(0)
    model = VQVAE(_tiny())
    model(_images())[0].pow(2).mean().backward()
    first = model.encoder.layers[0].weight.grad
    assert first is not None and float(first.abs().sum()) > 0


def test_commitment_loss_pulls_only_the_encoder() -> None:
    vq = _quantizer([[0.0, 0.0], [10.0, 10.0]], commitment=0.25)
    z = _grid([[1.0, 0.0], [9.0, 9.0]]).requires_grad_()
    _, loss, _ = vq(z)
    # beta * mean over all elements of (z - e)^2: (1 + 0 + 1 + 1) / 4.
    assert loss.item() == pytest.approx(0.25 * 3 / 4)
    loss.backward()
    torch.testing.assert_close(z.grad, 0.25 * 2 * (z.detach() - _grid([[0.0, 0.0], [10.0, 10.0]])) / 4)


def test_ema_update_matches_a_hand_computation() -> None:
    decay, eps = 0.9, 1e-5
    vq = _quantizer([[0.0, 0.0], [10.0, 10.0]], ema_decay=decay, eps=eps).train()
    quantized, _, codes = vq(_grid([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]))
    assert codes.flatten().tolist() == [0, 0, 1]
    torch.testing.assert_close(quantized, _grid([[0.0, 0.0], [0.0, 0.0], [10.0, 10.0]]))  # the old codebook
    # N = 0.9 * [1, 1] + 0.1 * [2, 1];  m = 0.9 * old codes + 0.1 * sums of assigned vectors ([1, 1], [9, 9]).
    n = torch.tensor([1.1, 1.0])
    m = torch.tensor([[0.1, 0.1], [9.9, 9.9]])
    smoothed = (n + eps) / (n.sum() + 2 * eps) * n.sum()
    torch.testing.assert_close(vq.cluster_size, n)
    torch.testing.assert_close(vq.embed_sum, m)
    torch.testing.assert_close(vq.codebook, m / smoothed[:, None])
    assert vq.codebook[0, 0] == pytest.approx(0.1 / 1.1, rel=1e-4)  # moved from 0 towards the mean 0.5
    assert vq.codebook[1, 0] == pytest.approx(9.9, rel=1e-4)  # moved from 10 towards 9


def test_eval_mode_and_encode_leave_the_codebook_alone() -> None:
    torch.manual_seed(0)
    model = VQVAE(_tiny())
    before = {k: v.clone() for k, v in model.quantizer.state_dict().items()}
    model.encode(_images())  # train mode, but encode never learns
    model.eval()
    model(_images())
    after = model.quantizer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not bool(model.quantizer.initialized) and int(model.quantizer.usage.sum()) == 0


def test_kmeans_init_places_codes_on_the_clusters() -> None:
    torch.manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    points = (centers.repeat_interleave(50, dim=0) + 0.1 * torch.randn(200, 2)).tolist()
    vq = VectorQuantizer(4, 2, cosine=False, kmeans_iters=5, dead_code_steps=0).train()
    assert not bool(vq.initialized)
    vq(_grid(points))
    assert bool(vq.initialized)
    # Every cluster got its own code, at the cluster's mean (EMA with decay 0.99 barely moves it after init).
    distances = torch.cdist(centers, vq.codebook)  # (4 centers, 4 codes)
    assert sorted(distances.argmin(dim=1).tolist()) == [0, 1, 2, 3]
    assert float(distances.min(dim=1).values.max()) < 0.1
    torch.testing.assert_close(vq.cluster_size, torch.full((4,), 50.0))


def test_kmeans_plus_plus_with_fewer_points_than_codes_uses_every_point() -> None:
    torch.manual_seed(0)
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    seeds = kmeans_plus_plus(points, 5)
    assert {tuple(s.tolist()) for s in seeds} == {tuple(p.tolist()) for p in points}


def test_dead_codes_are_restarted_from_batch_vectors() -> None:
    torch.manual_seed(0)
    vq = _quantizer([[0.0, 0.0], [10.0, 10.0], [100.0, 100.0]], dead_code_steps=2).train()
    batch = [[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]
    vq(_grid(batch))
    assert vq.unused_steps.tolist() == [0, 0, 1]
    torch.testing.assert_close(vq.codebook[2], torch.tensor([100.0, 100.0]))  # not dead yet
    vq(_grid(batch))
    # Code 2 was unused for 2 steps: it is now one of this batch's vectors, with a fresh count.
    restarted = vq.codebook[2].tolist()
    assert restarted in batch
    assert vq.unused_steps.tolist() == [0, 0, 0] and float(vq.cluster_size[2]) == 1.0
    torch.testing.assert_close(vq.embed_sum[2], vq.codebook[2])
    # It is in use again: the vector it was seeded from now maps to it.
    assert vq.lookup(_grid([restarted])).flatten().tolist() == [2]


def test_usage_counter_and_perplexity_on_a_known_assignment() -> None:
    vq = _quantizer([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]).train()
    vq(_grid([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [10.0, 0.0]]))  # codes 0, 0, 1, 1
    stats = vq.codebook_stats()
    assert stats.used_fraction == 0.5 and stats.assignments == 4
    assert stats.perplexity == pytest.approx(2.0)  # two codes, equally often
    vq(_grid([[0.0, 10.0], [0.0, 10.0], [0.0, 10.0], [10.0, 10.0], [10.0, 10.0], [10.0, 10.0], [0.0, 0.0]]))
    stats = vq.codebook_stats(reset=True)  # counts so far: [3, 2, 3, 3]
    assert stats.used_fraction == 1.0 and stats.assignments == 11
    p = torch.tensor([3, 2, 3, 3]) / 11
    assert stats.perplexity == pytest.approx(math.exp(-float((p * p.log()).sum())))
    assert vq.codebook_stats().assignments == 0 and vq.codebook_stats().perplexity == 0.0
    assert codebook_perplexity(torch.tensor([5, 5, 5, 5, 0])) == pytest.approx(4.0)
    assert codebook_perplexity(torch.tensor([7, 0, 0])) == pytest.approx(1.0)


def test_cosine_mode_normalises_vectors_and_codes() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, cosine=True, kmeans_iters=2, dead_code_steps=0).train()
    z = torch.randn(2, 4, 3, 3) * 5
    quantized, _, _ = vq(z)
    torch.testing.assert_close(vq.codebook.norm(dim=-1), torch.ones(8))  # after k-means and the EMA update
    torch.testing.assert_close(quantized.norm(dim=1), torch.ones(2, 3, 3))
    vq.eval()
    # Only the direction matters: scaling a vector keeps its code.
    assert torch.equal(vq.lookup(z), vq.lookup(z * 0.01))
    scores = torch.nn.functional.normalize(z.permute(0, 2, 3, 1), dim=-1) @ vq.codebook.T  # (B, h, w, K)
    assert torch.equal(vq.lookup(z), scores.argmax(-1))


def test_lookup_stays_fp32_under_autocast() -> None:
    torch.manual_seed(0)
    for cosine in (True, False):
        vq = VectorQuantizer(512, 8, cosine=cosine, kmeans_iters=0).eval()
        z = torch.randn(4, 8, 8, 8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            in_bf16 = vq(z)[2]
        assert torch.equal(in_bf16, vq(z)[2])


def test_checkpoint_without_tokenizer_roundtrips_through_the_registry(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = _tiny()
    model = VQVAE(config)
    model(_images(8))  # train mode: k-means init + one EMA update, so the buffers are not the defaults
    model.eval()
    save_checkpoint(tmp_path / "ckpt", model, "vqvae", config, None)
    assert not any(p.name.startswith(("tokenizer", "vocab", "char")) for p in (tmp_path / "ckpt").iterdir())
    loaded = load_pretrained(tmp_path / "ckpt")
    assert loaded.family == "vqvae" and loaded.tokenizer is None and loaded.config == config
    assert isinstance(loaded.model, VQVAE) and not loaded.model.training
    assert bool(loaded.model.quantizer.initialized)
    images = _images()
    torch.testing.assert_close(loaded.model.quantizer.codebook, model.quantizer.codebook, rtol=0, atol=0)
    assert torch.equal(loaded.model.encode(images), model.encode(images))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(images)[0], model(images)[0], rtol=0, atol=0)
    with pytest.raises(GenloomError, match="not a language model"):
        load_language_model(tmp_path / "ckpt")


def _ddp_worker(rank: int, init_file: str, data: torch.Tensor, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(rank)  # different RNG streams: agreement must come from the collectives
        plain = VectorQuantizer(4, 2, cosine=False, kmeans_iters=3, dead_code_steps=0).train()
        restarting = VectorQuantizer(4, 2, cosine=False, kmeans_iters=3, dead_code_steps=1).train()
        for step in range(data.shape[1]):
            plain(_grid(data[rank, step].tolist()))
            restarting(_grid(data[rank, step].tolist()))
        torch.save({"plain": plain.state_dict(), "restarting": restarting.state_dict(), "usage": plain.usage},
                   f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_codebook_stays_identical_across_processes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    # (rank, step, vector, D): step 0 has four clusters, later steps only the first, so three codes go
    # unused and are restarted; every process sees different vectors.
    centers = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    data = 0.3 * torch.randn(2, 3, 16, 2)
    data[:, 0] += centers.repeat_interleave(4, dim=0)
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), data, str(tmp_path / "vq")), nprocs=2)
    a, b = (torch.load(tmp_path / f"vq.{r}", weights_only=True) for r in (0, 1))
    for name in ("plain", "restarting"):
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)
    assert int(a["usage"].sum()) == int(b["usage"].sum()) == 3 * 2 * 16  # global counts
    assert int((a["restarting"]["codebook"].norm(dim=-1) < 2).sum()) >= 3  # restarted near the first cluster
    # Same as one process that runs k-means on rank 0's first batch, then sees each global batch whole.
    torch.manual_seed(0)
    reference = VectorQuantizer(4, 2, cosine=False, kmeans_iters=3, dead_code_steps=0).train()
    VectorQuantizer(4, 2)  # draws its random codebook, as `restarting` does on rank 0 before k-means runs
    reference._kmeans_init(data[0, 0])
    for step in range(data.shape[1]):
        reference(_grid(torch.cat([data[0, step], data[1, step]]).tolist()))
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(a["plain"][key], value, msg=key)
