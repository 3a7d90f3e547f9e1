"""VQ-VAE image tokenizer: images <-> a grid of discrete codes, the "image language" of DALL-E style generation.

A convolutional encoder maps an image to a grid of low-dimensional vectors, each is replaced by its nearest
codebook entry, and a convolutional decoder maps the codes back to pixels (van den Oord et al. 2017). The
codebook is not trained by gradients but by exponential moving averages, i.e. online k-means (van den Oord
et al. 2017, appendix A.1; Razavi et al. 2019), started from k-means on the first training batch; codes that
go unused are re-seeded from encoder outputs (Dhariwal et al. 2020, "Jukebox"). Codes are low-dimensional
and, by default, l2-normalised so the lookup is by cosine similarity (Yu et al. 2021, "ViT-VQGAN" §3.2):
both keep most of the codebook in use.

With `colour_codes` > 0 a token is a pair: a shape code of the patch's brightness and a code of its colour
(see `vq_colour.value_and_chroma`), so that one colour drawn in a new shape is a new pair of known parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.config import from_presets
from genloom.errors import GenloomError
from genloom.models.vq_colour import ColourDecoder, ColourEncoder, compose, value_and_chroma

EncoderKind = Literal["conv", "patch"]


@dataclass
class VQConfig:
    resolution: int = 32  # images are resolution x resolution RGB, with values in [-1, 1]
    widths: tuple[int, ...] = (64, 128, 128)  # conv channels at each scale; the image is halved between scales
    res_blocks: int = 2  # residual blocks per scale, in the encoder and (mirrored) in the decoder
    # conv: a convolutional encoder whose codes also see the neighbouring patches. patch: each code sees only its
    # own patch (an MLP on the patch's pixels), so equal patches always get the same code; see `PatchEncoder`.
    encoder: EncoderKind = "conv"
    norm_groups: int = 32  # GroupNorm groups; must divide every width
    codebook_size: int = 512  # K codes: the vocabulary of the image language
    code_dim: int = 8  # dimension of a code; a low one (4-32) keeps codes in use (ViT-VQGAN §3.2)
    cosine: bool = True  # l2-normalise encoder outputs and codes, so the lookup is by cosine similarity
    ema_decay: float = 0.99  # gamma of the EMA codebook update (van den Oord et al. 2017, appendix A.1)
    commitment: float = 0.25  # beta: weight of ||z - sg(e)||^2 keeping encoder outputs near their codes
    kmeans_iters: int = 10  # Lloyd iterations (after k-means++ seeding) on the first training batch; 0: random codes
    dead_code_steps: int = 100  # a code assigned in none of this many consecutive training steps is re-seeded; 0: never
    eps: float = 1e-5  # Laplace smoothing of the EMA cluster sizes, so no code divides by zero
    # > 0: factorised tokens for flat-coloured images on a dark background. The patch encoder sees only the
    # brightness (per-pixel max over RGB) and its `codebook_size` codes say where the patch is lit; a second
    # quantizer with `colour_codes` codes says the patch's colour; the image is brightness x colour. A token is
    # shape * colour_codes + colour. A patch has one colour: multicoloured images (emoji) lose detail.
    colour_codes: int = 0

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)  # JSON gives a list back
        for name in ("resolution", "res_blocks", "norm_groups", "codebook_size", "code_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} ({getattr(self, name)}) must be positive")
        if not self.widths or any(w <= 0 for w in self.widths):
            raise ValueError(f"widths ({list(self.widths)}) must be one or more positive channel counts")
        if any(w % self.norm_groups for w in self.widths):
            raise ValueError(
                f"every width in {list(self.widths)} must be divisible by norm_groups ({self.norm_groups})"
            )
        factor = 2**self.downsamplings
        if self.resolution % factor:
            raise ValueError(
                f"resolution ({self.resolution}) must be divisible by {factor} ({self.downsamplings} halvings "
                f"for {len(self.widths)} widths)"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay ({self.ema_decay}) must be in [0, 1)")
        if self.commitment < 0:
            raise ValueError(f"commitment ({self.commitment}) must be >= 0")
        if self.kmeans_iters < 0 or self.dead_code_steps < 0:
            raise ValueError(
                f"kmeans_iters ({self.kmeans_iters}) and dead_code_steps ({self.dead_code_steps}) must be >= 0"
            )
        if self.eps <= 0:
            raise ValueError(f"eps ({self.eps}) must be positive")
        if self.encoder not in ("conv", "patch"):
            raise ValueError(f"encoder ({self.encoder!r}) must be conv or patch")
        if self.colour_codes < 0:
            raise ValueError(f"colour_codes ({self.colour_codes}) must be >= 0")
        if self.colour_codes and self.encoder != "patch":
            raise ValueError("colour_codes needs the patch encoder (encoder='patch')")

    @property
    def downsamplings(self) -> int:
        """How many times the encoder halves the image: one between consecutive widths."""
        return len(self.widths) - 1

    @property
    def grid_size(self) -> int:
        """Side of the code grid: an image becomes grid_size**2 tokens."""
        return self.resolution // 2**self.downsamplings

    @property
    def patch_size(self) -> int:
        """Side in pixels of the patch one token stands for."""
        return 2**self.downsamplings

    @property
    def vocab_size(self) -> int:
        """Distinct tokens: codebook_size, or codebook_size * colour_codes for factorised tokens."""
        return self.codebook_size * max(1, self.colour_codes)


PRESETS: dict[str, VQConfig] = {
    # Tests: 32x32 -> 8x8 codes, 154k parameters.
    "vq-tiny": VQConfig(widths=(16, 32, 32), res_blocks=1, norm_groups=8, codebook_size=128),
    # 32x32 emoji and shapes -> 8x8 = 64 tokens per image from 512 codes; 3.7M parameters.
    "vq-small": VQConfig(widths=(64, 128, 128), res_blocks=2, norm_groups=32, codebook_size=512),
    # Flat-coloured images on a dark background (builtin:shapes): vq-tiny's size with a patch encoder and tokens
    # that pair one of 64 shape codes with one of 8 colour codes, so unseen colour+shape pairs are new pairs of
    # known codes. The image quickstart's. 98k parameters.
    "vq-colour": VQConfig(
        widths=(16, 32, 32), res_blocks=1, norm_groups=8, encoder="patch", codebook_size=64, colour_codes=8
    ),
    # 8x8 digits (scikit-learn) -> 4x4 = 16 tokens per image.
    "vq-digits": VQConfig(resolution=8, widths=(32, 64), res_blocks=1, norm_groups=8, codebook_size=128),
}


def preset(name: str, **overrides: object) -> VQConfig:
    """A copy of preset `name` with `overrides` applied."""
    return from_presets(PRESETS, name, **overrides)


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
            raise GenloomError(f"expected vectors of shape (B, {self.code_dim}, h, w), got {tuple(z.shape)}")
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
            raise GenloomError(
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


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus a skip (1x1 conv when the width changes)."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """(B, 3, H, W) -> (B, code_dim, H/2^d, W/2^d)."""

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        widths, groups = config.widths, config.norm_groups
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        c = widths[0]
        for i, width in enumerate(widths):
            for _ in range(config.res_blocks):
                layers.append(ResBlock(c, width, groups))
                c = width
            if i < len(widths) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # halve H and W
        layers += [ResBlock(c, c, groups), nn.GroupNorm(groups, c), nn.SiLU()]
        # Project to the low-dimensional code space (ViT-VQGAN's factorised codes): lookup happens there.
        layers.append(nn.Conv2d(c, config.code_dim, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class PatchEncoder(nn.Module):
    """(B, C, H, W) -> (B, code_dim, H/p, W/p), each code a function of its own p x p patch only (p = 2^d).

    A convolutional encoder's receptive field spans neighbouring patches, so one patch content gets different
    codes in different surroundings: on builtin:shapes (85 distinct 4x4 patches) about 3 nats of code entropy
    per token that the caption->image model must learn to predict and that no image needs. Here a patch's pixels
    go through a residual MLP with per-position LayerNorm (ViT-style patch embedding; no norm pools over
    positions), so equal patches get equal codes. The decoder still sees neighbours, to draw smooth seams.
    """

    def __init__(self, config: VQConfig, channels: int = 3) -> None:
        super().__init__()
        self.patch = config.patch_size
        width = config.widths[-1]
        self.embed = nn.Linear(channels * self.patch**2, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
            for _ in range(config.res_blocks * len(config.widths))
        )
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, config.code_dim))

    def forward(self, x: Tensor) -> Tensor:
        patches = F.pixel_unshuffle(x, self.patch).permute(0, 2, 3, 1)  # (B, h, w, C * p * p)
        h = self.embed(patches)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h).permute(0, 3, 1, 2)  # (B, code_dim, h, w)


class Decoder(nn.Module):
    """(B, code_dim, h, w) -> (B, channels, h*2^d, w*2^d), the encoder mirrored with nearest-neighbour upsampling."""

    def __init__(self, config: VQConfig, channels: int = 3) -> None:
        super().__init__()
        widths, groups = config.widths, config.norm_groups
        c = widths[-1]
        layers: list[nn.Module] = [nn.Conv2d(config.code_dim, c, 3, padding=1), ResBlock(c, c, groups)]
        for i in reversed(range(len(widths))):
            for _ in range(config.res_blocks):
                layers.append(ResBlock(c, widths[i], groups))
                c = widths[i]
            if i > 0:
                # Nearest upsampling + conv instead of a transposed conv: no checkerboard artefacts.
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
        layers += [nn.GroupNorm(groups, c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.layers(z)


class VQVAE(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] <-> codes (B, h, w) in [0, vocab_size)."""

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = config
        self.colour_codes = config.colour_codes  # 0: one quantizer; > 0: shape x colour tokens
        factorised = self.colour_codes > 0
        self.encoder: nn.Module = (
            PatchEncoder(config, channels=1 if factorised else 3) if config.encoder == "patch" else Encoder(config)
        )
        self.quantizer = self._quantizer(config.codebook_size)
        self.decoder = Decoder(config, channels=1 if factorised else 3)
        # The colour half of factorised tokens (see `genloom.models.vq_colour`).
        self.colour_encoder: ColourEncoder | None = None
        self.colour_quantizer: VectorQuantizer | None = None
        self.colour_decoder: ColourDecoder | None = None
        if factorised:
            width = config.widths[0]
            self.colour_encoder = ColourEncoder(config.code_dim, width)
            self.colour_quantizer = self._quantizer(config.colour_codes)
            self.colour_decoder = ColourDecoder(config.code_dim, width, config.patch_size)

    def _quantizer(self, codebook_size: int) -> VectorQuantizer:
        c = self.config
        return VectorQuantizer(
            codebook_size, c.code_dim, cosine=c.cosine, ema_decay=c.ema_decay, commitment=c.commitment,
            kmeans_iters=c.kmeans_iters, dead_code_steps=c.dead_code_steps, eps=c.eps,
        )

    @property
    def grid_size(self) -> int:
        """Side of the code grid of one image."""
        return self.config.grid_size

    def num_parameters(self) -> int:
        """Trainable parameters (the EMA codebook is a buffer and not counted)."""
        return sum(p.numel() for p in self.parameters())

    def _check_images(self, images: Tensor) -> None:
        r = self.config.resolution
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, r, r):
            raise GenloomError(f"expected images of shape (B, 3, {r}, {r}), got {tuple(images.shape)}")

    def _latents(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Encoder outputs (B, D, h, w) for the (shape) quantizer and for the colour quantizer (None if unused)."""
        if self.colour_encoder is None:
            return self.encoder(images), None
        value, chroma = value_and_chroma(images, self.config.patch_size)
        return self.encoder(value), self.colour_encoder(chroma)

    def _render(self, shape_vectors: Tensor, colour_vectors: Tensor | None) -> Tensor:
        """Unclamped image (B, 3, H, W) from quantized vectors (B, D, h, w)."""
        if colour_vectors is None:
            return self.decoder(shape_vectors)
        assert self.colour_decoder is not None
        return compose(self.decoder(shape_vectors), self.colour_decoder(colour_vectors))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction (B, 3, H, W), unclamped; vq loss; codes (B, h, w)). Trains the codebook in train mode."""
        self._check_images(images)
        z, z_colour = self._latents(images)  # (B, D, h, w) each
        quantized, vq_loss, codes = self.quantizer(z)
        if z_colour is None:
            return self._render(quantized, None), vq_loss, codes
        assert self.colour_quantizer is not None
        colour_quantized, colour_loss, colours = self.colour_quantizer(z_colour)
        return (
            self._render(quantized, colour_quantized), vq_loss + colour_loss, codes * self.colour_codes + colours
        )

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Codes (B, h, w), dtype long, of images (B, 3, H, W) in [-1, 1]; never changes the codebook."""
        self._check_images(images)
        z, z_colour = self._latents(images)
        codes = self.quantizer.lookup(z)
        if z_colour is None:
            return codes
        assert self.colour_quantizer is not None
        return codes * self.colour_codes + self.colour_quantizer.lookup(z_colour)

    @torch.no_grad()
    def blank_token(self) -> int:
        """Factorised tokens: the token of an all-black patch, whose colour code (black) no lit patch gets; -1
        otherwise. See `genloom.models.dalle.Dalle._image_logits`."""
        if self.colour_quantizer is None:
            return -1
        r = self.config.resolution
        p = next(self.parameters())
        return int(self.encode(torch.full((1, 3, r, r), -1.0, device=p.device, dtype=p.dtype))[0, 0, 0])

    def decode(self, codes: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] of codes (B, h, w)."""
        g = self.grid_size
        if codes.dim() != 3 or tuple(codes.shape[1:]) != (g, g):
            raise GenloomError(f"expected codes of shape (B, {g}, {g}), got {tuple(codes.shape)}")
        if self.colour_quantizer is None:
            return self._render(self.quantizer.embed(codes), None).clamp(-1.0, 1.0)
        vocab = self.config.vocab_size
        if codes.min() < 0 or codes.max() >= vocab:
            raise GenloomError(
                f"codes must be in [0, {vocab}), got values from {int(codes.min())} to {int(codes.max())}"
            )
        shapes, colours = codes // self.colour_codes, codes % self.colour_codes
        image = self._render(self.quantizer.embed(shapes), self.colour_quantizer.embed(colours))
        return image.clamp(-1.0, 1.0)
