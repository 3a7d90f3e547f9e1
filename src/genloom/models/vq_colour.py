"""The colour half of factorised image tokens: split an image into brightness and per-patch colour, and back.

An image of flat colours on a dark background is, pixel by pixel, brightness x colour: the brightness (the
max over R, G, B, HSV's "value") says where something is drawn and is the same for every colour, and the colour
is constant over a patch that one object covers. Tokenizing the two apart gives an image language in which
"green" and "triangle" are separate symbols, so a caption->image model can draw a green triangle from a green
circle's colour codes and a red triangle's shape codes, though it never saw a green triangle (builtin:shapes
holds such pairs out to test exactly that). `VQVAE` uses these modules when `VQConfig.colour_codes` > 0, and
`Dalle` the blank-patch rule below, which is what the two halves of such tokens must obey.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def value_and_chroma(images: Tensor, patch: int) -> tuple[Tensor, Tensor]:
    """Images (B, 3, H, W) in [-1, 1] -> brightness (B, 1, H, W) in [-1, 1] and patch colours (B, 3, h, w).

    A patch's colour c minimises sum over its pixels of ||rgb - v c||^2 (v = the pixel's brightness in [0, 1]):
    c = sum(v rgb) / sum(v^2), exactly the fill colour when the patch shows one flat colour, in [0, 1] per
    channel, and 0 for a black patch.
    """
    unit = (images.float() + 1.0) / 2.0  # (B, 3, H, W) in [0, 1]
    value = unit.amax(dim=1, keepdim=True)  # (B, 1, H, W)
    weighted = F.avg_pool2d(unit * value, patch)  # (B, 3, h, w)
    energy = F.avg_pool2d(value * value, patch)  # (B, 1, h, w)
    chroma = weighted / energy.clamp(min=1e-6)  # 0 / 1e-6 = 0 where the patch is black
    return value * 2.0 - 1.0, chroma


class ColourEncoder(nn.Module):
    """Patch colours (B, 3, h, w) -> vectors (B, code_dim, h, w), an MLP applied at each position."""

    def __init__(self, code_dim: int, width: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(3, width, 1), nn.SiLU(), nn.Conv2d(width, code_dim, 1))

    def forward(self, chroma: Tensor) -> Tensor:
        return self.layers(chroma * 2.0 - 1.0)


class ColourDecoder(nn.Module):
    """Colour code vectors (B, code_dim, h, w) -> colours (B, 3, h*p, w*p), constant over each p x p patch."""

    def __init__(self, code_dim: int, width: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.layers = nn.Sequential(nn.Conv2d(code_dim, width, 1), nn.SiLU(), nn.Conv2d(width, 3, 1))

    def forward(self, codes: Tensor) -> Tensor:
        return F.interpolate(self.layers(codes), scale_factor=self.patch, mode="nearest")


def compose(value: Tensor, colour: Tensor) -> Tensor:
    """Brightness (B, 1, H, W) in [-1, 1] x colour (B, 3, H, W) in [0, 1] -> image (B, 3, H, W) in [-1, 1]."""
    return (value + 1.0) * colour - 1.0


# ---- the blank-patch rule of factorised tokens ------------------------------------------------------------
# A token is shape * C + colour. On flat colours over a dark background one dependence between the two halves
# is structural: a black patch has no colour, and a lit patch is never black. With the blank patch's token
# (s0, k) -- its shape code s0 and the black colour code k -- a model keeps it exactly: p(s0, k) = p(s0),
# p(s, k) = 0 for s != s0 and p(s0, c) = 0 for c != k. Two independent draws would otherwise make a lit patch
# black (a hole in a shape) whenever the model is unsure whether the patch is lit.

IMPOSSIBLE = -1e9  # the log-probability of image tokens a model with the rule never emits


def breaks_blank_rule(tokens: Tensor, blank_token: int, colour_codes: int) -> Tensor:
    """Mask of factorised `tokens` the rule forbids: the blank patch's shape code with a colour other than black,
    or a lit shape code in black."""
    shape, colour = divmod(blank_token, colour_codes)
    return (tokens // colour_codes == shape) != (tokens % colour_codes == colour)


def usable_blank_token(blank_token: int, colour_codes: int, codes: Tensor) -> int:
    """`blank_token` (the tokenizer's all-black patch, -1 if it has none) if in `codes` the blank shape code and
    the black colour code always come together (a cleanly trained factorised tokenizer), else -1: a model then
    predicts the two halves independently."""
    if blank_token < 0 or bool(breaks_blank_rule(codes, blank_token, colour_codes).any()):
        return -1
    return blank_token


def blank_rule_masks(blank_token: int, image_vocab_size: int, colour_codes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Masks of the black colour (C,), of the blank shape (S,) and of the forbidden pairs (S, C)."""
    s0, k = divmod(blank_token, colour_codes)
    is_black = torch.arange(colour_codes) == k
    is_blank = torch.arange(image_vocab_size // colour_codes) == s0
    pairs = torch.arange(image_vocab_size).view(-1, colour_codes)  # (S, C): token s * C + c
    return is_black, is_blank, breaks_blank_rule(pairs, blank_token, colour_codes)


def factorised_log_probs(
    shape_logits: Tensor, colour_logits: Tensor, rule: tuple[Tensor, Tensor, Tensor] | None
) -> Tensor:
    """(..., S) shape and (..., C) colour logits -> normalised log-probabilities (..., S * C) of the tokens,
    log p(shape) + log p(colour), with the blank-patch rule when `rule` (from `blank_rule_masks`) is given.

    Normalised log-probabilities, so cross-entropy, temperature, top-k/top-p and guidance all work on them as on
    ordinary logits; the colour of a lit patch is drawn from the colour head without black.
    """
    shape = F.log_softmax(shape_logits.float(), dim=-1)  # (..., S)
    colour_logits = colour_logits.float()
    if rule is None:
        colour = F.log_softmax(colour_logits, dim=-1)
        return (shape.unsqueeze(-1) + colour.unsqueeze(-2)).flatten(-2)  # (..., S * C); token = s * C + c
    is_black, is_blank, impossible = rule
    colour = F.log_softmax(colour_logits.masked_fill(is_black, IMPOSSIBLE), dim=-1)  # never black
    colour_given_shape = torch.where(is_blank.unsqueeze(-1), 0.0, colour.unsqueeze(-2))  # (..., S, C)
    joint = shape.unsqueeze(-1) + colour_given_shape
    # A constant, not -inf: guidance's cond + g * (cond - uncond) keeps it (-inf - -inf would be NaN).
    return joint.masked_fill(impossible, IMPOSSIBLE).flatten(-2)
