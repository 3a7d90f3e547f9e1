"""The EMA vector quantizer: lookup, commitment loss, EMA updates by hand, k-means init, dead-code restarts,
usage statistics, cosine mode, fp32 under autocast and codebook agreement across processes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from genloom.nn.quantizer import VectorQuantizer, codebook_perplexity, kmeans_plus_plus


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


def test_straight_through_gradient_reaches_the_encoder() -> None:
    vq = _quantizer([[0.0, 0.0], [10.0, 10.0]])
    z = _grid([[1.0, 0.0], [9.0, 9.0]]).requires_grad_()
    quantized, _, codes = vq(z)
    assert codes.flatten().tolist() == [0, 1]
    torch.testing.assert_close(quantized, _grid([[0.0, 0.0], [10.0, 10.0]]))  # forward: the codes
    weights = torch.randn_like(quantized)
    (quantized * weights).sum().backward()
    torch.testing.assert_close(z.grad, weights)  # backward: identity


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
