"""Vector quantization with an EMA-learned codebook: continuous vectors -> the nearest of K codes.

The codebook is not trained by gradients but by exponential moving averages, i.e. online k-means (van den Oord
et al. 2017, appendix A.1; Razavi et al. 2019), started from k-means++ on the first training batch; codes that
go unused are re-seeded from encoder outputs (Dhariwal et al. 2020, "Jukebox"). With `cosine` vectors and codes
are l2-normalised, so the lookup is by cosine similarity (Yu et al. 2021, "ViT-VQGAN" §3.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class CodebookStats:
    used_fraction: float  # fraction of the K codes assigned at least once
    perplexity: float  # exp(entropy) of the assignment frequencies: K when uniform, 1 for one code; 0 if none
    assignments: int  # vectors counted


def codebook_perplexity(counts: Tensor) -> float:
    """exp(entropy) of the distribution `counts` (K,) / counts.sum(); 0.0 when nothing was counted."""
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts.double() / total
    return float(torch.exp(-(p * torch.log(p.clamp(min=1e-30))).sum()))


def kmeans_plus_plus(points: Tensor, k: int) -> Tensor:
    """k seeds (k, D) from points (N, D), each drawn with probability proportional to its squared distance to
    the seeds so far (Arthur & Vassilvitskii 2007): unlike uniform seeding it rarely puts two seeds in one
    cluster and none in another, a local optimum Lloyd iterations cannot leave. Once every distinct point is
    a seed (fewer points than codes), the rest repeat random points; dead-code restarts spread them later.
    """
    n = points.shape[0]
    seeds = torch.empty(k, points.shape[1], dtype=points.dtype, device=points.device)
    seeds[0] = points[torch.randint(n, (1,), device=points.device)]
    d2 = (points - seeds[0]).pow(2).sum(-1)  # (N,) squared distance to the nearest seed
    for i in range(1, k):
        total = float(d2.sum())
        index = torch.multinomial(d2, 1) if total > 0 else torch.randint(n, (1,), device=points.device)
        seeds[i] = points[index]
        d2 = torch.minimum(d2, (points - seeds[i]).pow(2).sum(-1))
    return seeds


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VectorQuantizer(nn.Module):
    """Nearest-code lookup with an EMA-learned codebook, straight-through gradients and a commitment loss.

    Input and output are (B, D, h, w) grids of D-dimensional vectors. The codebook and its statistics are
    buffers: they change only in training mode, by the EMA update, never by the optimizer. Under
    torch.distributed the per-batch statistics are all-reduced and random choices come from rank 0, so the
    codebook stays identical on every process.
    """

    # Buffers, declared for type checkers.
    codebook: Tensor
    cluster_size: Tensor
    embed_sum: Tensor
    initialized: Tensor
    unused_steps: Tensor
    usage: Tensor

    def __init__(
        self,
        codebook_size: int,
        code_dim: int,
        cosine: bool = True,
        ema_decay: float = 0.99,
        commitment: float = 0.25,
        kmeans_iters: int = 10,
        dead_code_steps: int = 100,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.cosine = cosine
        self.ema_decay = ema_decay
        self.commitment = commitment
        self.kmeans_iters = kmeans_iters
        self.dead_code_steps = dead_code_steps
        self.eps = eps
        codebook = torch.randn(codebook_size, code_dim)
        if cosine:
            codebook = F.normalize(codebook, dim=-1)
        self.register_buffer("codebook", codebook)  # (K, D)
        # EMA state: the codebook is embed_sum / (smoothed) cluster_size. Starting at one assignment per code
        # makes the random codebook consistent with it when k-means is off.
        self.register_buffer("cluster_size", torch.ones(codebook_size))  # (K,)
        self.register_buffer("embed_sum", codebook.clone())  # (K, D)
        self.register_buffer("initialized", torch.tensor(kmeans_iters == 0))  # k-means has run (or is off)
        self.register_buffer("unused_steps", torch.zeros(codebook_size, dtype=torch.long))  # (K,)
        # Assignments per code since the last reset, for usage and perplexity reports; not model state.
        self.register_buffer("usage", torch.zeros(codebook_size, dtype=torch.long), persistent=False)  # (K,)

    # ---- lookup -------------------------------------------------------------------------------------------
    def _flatten(self, z: Tensor) -> Tensor:
        """(B, D, h, w) -> (B*h*w, D) in fp32, l2-normalised in cosine mode."""
        if z.dim() != 4 or z.shape[1] != self.code_dim:
            raise ValueError(f"expected vectors of shape (B, {self.code_dim}, h, w), got {tuple(z.shape)}")
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, self.code_dim)  # (B*h*w, D)
        return F.normalize(flat, dim=-1) if self.cosine else flat

    def _nearest(self, flat: Tensor, codebook: Tensor) -> Tensor:
        """Index of the nearest code of each row of `flat` (N, D) -> (N,)."""
        # In fp32 even under autocast: a bf16 matmul would pick wrong codes among near-equal distances.
        with torch.autocast(flat.device.type, enabled=False):
            if self.cosine:
                return (flat @ codebook.T).argmax(dim=-1)  # both unit length: max cosine = min distance
            # ||x - e||^2 = ||x||^2 - 2 x.e + ||e||^2; ||x||^2 is the same for every code.
            distances = codebook.pow(2).sum(-1)[None, :] - 2 * flat @ codebook.T  # (N, K)
            return distances.argmin(dim=-1)

    def lookup(self, z: Tensor) -> Tensor:
        """Codes (B, h, w) of the vectors z (B, D, h, w); changes nothing, in any mode."""
        b, _, h, w = z.shape
        return self._nearest(self._flatten(z), self.codebook).view(b, h, w)

    def embed(self, codes: Tensor) -> Tensor:
        """Code vectors (B, D, h, w) of codes (B, h, w)."""
        if codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError(
                f"codes must be in [0, {self.codebook_size}), got values from {int(codes.min())} to {int(codes.max())}"
            )
        return self.codebook[codes].permute(0, 3, 1, 2)  # (B, h, w, D) -> (B, D, h, w)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(quantized (B, D, h, w) with straight-through gradients, commitment loss, codes (B, h, w)).

        In training mode this also initialises the codebook (first call), updates it by EMA, counts usage
        and restarts dead codes; the output uses the codebook as it was before this batch's update.
        """
        b, d, h, w = z.shape
        flat = self._flatten(z)  # (N, D), N = B*h*w
        if self.training and not bool(self.initialized):
            self._kmeans_init(flat.detach())
        codes = self._nearest(flat.detach(), self.codebook)  # (N,)
        quantized = self.codebook[codes]  # (N, D), a copy: the update below does not touch it
        if self.training:
            self._ema_update(flat.detach(), codes)
        # Only the encoder side is pulled: the codebook learns by EMA, not from this loss.
        loss = self.commitment * F.mse_loss(flat, quantized)
        # Straight-through estimator: the forward pass uses the code, the backward pass copies the decoder's
        # gradient onto the encoder output as if quantisation were the identity.
        quantized = flat + (quantized - flat).detach()
        return quantized.view(b, h, w, d).permute(0, 3, 1, 2), loss, codes.view(b, h, w)

    # ---- codebook learning (training mode only) ---------------------------------------------------------
    @torch.no_grad()
    def _kmeans_init(self, flat: Tensor) -> None:
        """k-means++ seeding, then a few Lloyd iterations, on the batch's vectors (N, D)."""
        n, k = flat.shape[0], self.codebook_size
        centroids = kmeans_plus_plus(flat, k)  # (K, D)
        for _ in range(self.kmeans_iters):
            codes = self._nearest(flat, centroids)
            counts = torch.bincount(codes, minlength=k)  # (K,)
            sums = torch.zeros_like(centroids).index_add_(0, codes, flat)  # (K, D)
            centroids = sums / counts.clamp(min=1)[:, None]
            empty = counts == 0  # an empty cluster takes a random vector instead of collapsing to 0
            centroids[empty] = flat[torch.randint(n, (int(empty.sum()),), device=flat.device)]
            if self.cosine:
                centroids = F.normalize(centroids, dim=-1)
        counts = torch.bincount(self._nearest(flat, centroids), minlength=k).float().clamp(min=1)
        if _distributed():
            dist.broadcast(centroids, src=0)  # every process takes rank 0's k-means
            dist.broadcast(counts, src=0)
        self.codebook.copy_(centroids)
        # EMA state consistent with the centroids: as if the batch had just been averaged in.
        self.cluster_size.copy_(counts)
        self.embed_sum.copy_(centroids * counts[:, None])
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, codes: Tensor) -> None:
        """N_i <- g N_i + (1-g) n_i;  m_i <- g m_i + (1-g) sum of the vectors assigned to i;  e_i = m_i / N_i."""
        k = self.codebook_size
        counts = torch.bincount(codes, minlength=k).float()  # (K,) n_i of this batch
        sums = torch.zeros(k, self.code_dim, device=flat.device).index_add_(0, codes, flat)  # (K, D)
        if _distributed():
            # The global batch's statistics, so every process makes the same update.
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        g = self.ema_decay
        self.cluster_size.mul_(g).add_(counts, alpha=1 - g)
        self.embed_sum.mul_(g).add_(sums, alpha=1 - g)
        # Laplace smoothing keeps N_i > 0 for codes that stopped being used (van den Oord et al. 2017, A.1).
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + k * self.eps) * total  # (K,)
        codebook = self.embed_sum / smoothed[:, None]
        self.codebook.copy_(F.normalize(codebook, dim=-1) if self.cosine else codebook)
        self.usage += counts.long()
        used = counts > 0
        self.unused_steps.copy_(torch.where(used, 0, self.unused_steps + 1))
        if self.dead_code_steps > 0:
            self._restart_dead_codes(flat)

    @torch.no_grad()
    def _restart_dead_codes(self, flat: Tensor) -> None:
        """Re-seed codes unused for `dead_code_steps` steps from random vectors of this batch (Jukebox §2.2)."""
        dead = self.unused_steps >= self.dead_code_steps  # (K,); the same on every process (global counts)
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        chosen = flat[torch.randint(flat.shape[0], (n_dead,), device=flat.device)].clone()  # (n_dead, D)
        if _distributed():
            dist.broadcast(chosen, src=0)
        self.codebook[dead] = chosen
        self.embed_sum[dead] = chosen  # with cluster size 1: the code is exactly the chosen vector
        self.cluster_size[dead] = 1.0
        self.unused_steps[dead] = 0

    # ---- usage reports ------------------------------------------------------------------------------------
    def reset_usage(self) -> None:
        self.usage.zero_()

    def codebook_stats(self, reset: bool = False) -> CodebookStats:
        """Usage of the codebook over the training steps since the last reset (then reset, if asked)."""
        counts = self.usage.clone()
        if reset:
            self.reset_usage()
        return CodebookStats(
            used_fraction=float((counts > 0).float().mean()),
            perplexity=codebook_perplexity(counts),
            assignments=int(counts.sum()),
        )
