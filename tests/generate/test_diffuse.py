"""The diffusion sampling pipeline: per-image seeds (batched == alone), guidance and negative prompts, img2img from
the noised init latent, previews, and one-line refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from genloom.data.captions import train_caption_tokenizer
from genloom.diffusion.process import DiffusionConfig
from genloom.errors import GenloomError
from genloom.generate.diffuse import DiffusionSampling, diffuse, init_latents
from genloom.models.dit import DiT, DiTConfig
from genloom.models.vae import VAE, VAEConfig
from genloom.tokenizers import SpecialIds

CAPTIONS = ["a red circle", "a blue square", "a green triangle above a red circle"]
TOKENIZER = train_caption_tokenizer(CAPTIONS, 300)
VAE_CONFIG = VAEConfig(resolution=16, widths=(8, 16), res_blocks=1, norm_groups=4)  # 16x16 -> 8x8x4


def _models(process: DiffusionConfig, trained_output: bool = True) -> tuple[DiT, VAE]:
    torch.manual_seed(0)
    config = DiTConfig(latent_size=8, d_model=32, n_layers=1, n_heads=2, d_ff=64, text_vocab_size=TOKENIZER.vocab_size,
                       text_len=12, text_layers=1, pad_id=SpecialIds.of(TOKENIZER).pad, process=process)
    model = DiT(config).eval()
    if trained_output:  # adaLN-Zero starts as the identity with a zero output; give it one that depends on the input
        for layer in (model.final.proj, model.final.modulation, *(b.modulation for b in model.blocks)):
            torch.nn.init.normal_(layer.weight, std=0.05)
    vae = VAE(VAE_CONFIG).eval()
    vae.latent_scale.fill_(1.5)
    return model, vae


@pytest.mark.parametrize("sampler", ["dpm++", "ddpm", "ddim"])
def test_an_image_is_the_same_alone_or_in_a_batch(sampler: str) -> None:
    model, vae = _models(DiffusionConfig())
    sampling = DiffusionSampling(steps=5, sampler=sampler, eta=0.5)
    _, batch = diffuse(model, TOKENIZER, vae, CAPTIONS[:2], n_images=2, sampling=sampling, guidance_scale=2.0,
                       seed=10, progress=False)
    _, alone = diffuse(model, TOKENIZER, vae, [CAPTIONS[1]], n_images=1, sampling=sampling, guidance_scale=2.0,
                       seed=13, progress=False)  # image 3 of the batch (prompt 1, second image) had seed 10 + 3
    torch.testing.assert_close(alone[0], batch[3], atol=1e-5, rtol=1e-5)
    _, again = diffuse(model, TOKENIZER, vae, CAPTIONS[:2], n_images=2, sampling=sampling, guidance_scale=2.0,
                       image_seeds=[10, 11, 12, 13], progress=False)
    assert torch.equal(again, batch)
    assert not torch.allclose(batch[0], batch[1])  # two seeds, two images


def test_guidance_and_the_negative_prompt_change_the_image() -> None:
    model, vae = _models(DiffusionConfig(objective="flow"))
    sampling = DiffusionSampling(steps=4)

    def latents(**kw: object) -> torch.Tensor:
        return diffuse(model, TOKENIZER, vae, [CAPTIONS[0]], sampling=sampling, seed=0, progress=False, **kw)[1]

    plain = latents(guidance_scale=1.0)
    guided = latents(guidance_scale=4.0)
    negative = latents(guidance_scale=4.0, negative_prompts=[CAPTIONS[1]])
    empty_negative = latents(guidance_scale=4.0, negative_prompts=[""])
    assert not torch.allclose(plain, guided) and not torch.allclose(guided, negative)
    torch.testing.assert_close(empty_negative, guided)  # "" is the empty caption guidance uses anyway


def test_img2img_with_an_untrained_flow_model_keeps_the_noised_init() -> None:
    # A zero-initialised DiT outputs 0: every Euler step keeps its sample, so the result is where sampling starts,
    # the init latent noised to the plan's first σ.
    model, vae = _models(DiffusionConfig(objective="flow"), trained_output=False)
    init = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    _, out = diffuse(model, TOKENIZER, vae, [CAPTIONS[0]], sampling=DiffusionSampling(steps=10), seed=4,
                     init_images=init, strength=0.3, guidance_scale=1.0, progress=False)
    sigma = float(torch.linspace(1.0, 1e-3, 10, dtype=torch.float64)[7])  # the last 3 of 10 steps
    noise = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(4))
    expected = (1 - sigma) * init_latents(vae, init[None])[0] + sigma * noise
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)


def test_previews_come_every_k_steps() -> None:
    model, vae = _models(DiffusionConfig())
    seen: list[tuple[int, tuple[int, ...]]] = []
    diffuse(model, TOKENIZER, vae, CAPTIONS[:2], sampling=DiffusionSampling(steps=6), seed=0, preview_every=2,
            on_preview=lambda step, images: seen.append((step, images.shape)), progress=False)
    assert seen == [(2, (2, 16, 16, 3)), (4, (2, 16, 16, 3)), (6, (2, 16, 16, 3))]


def test_refusals_are_one_line_errors() -> None:
    model, vae = _models(DiffusionConfig(caption_dropout=0.0))
    with pytest.raises(GenloomError, match="needs a model trained with caption dropout"):
        diffuse(model, TOKENIZER, vae, ["a red circle"], guidance_scale=3.0, progress=False)
    with pytest.raises(GenloomError, match="does not fit a model trained with the ddpm objective"):
        diffuse(model, TOKENIZER, vae, ["a red circle"], sampling=DiffusionSampling(sampler="euler"), progress=False)
    with pytest.raises(GenloomError, match="cannot exceed the 1000 timesteps"):
        diffuse(model, TOKENIZER, vae, ["a red circle"], sampling=DiffusionSampling(steps=2000), progress=False)
    with pytest.raises(GenloomError, match="an init image must be 16x16 RGB"):
        diffuse(model, TOKENIZER, vae, ["a red circle"], init_images=np.zeros((8, 8, 3), np.uint8), progress=False)
    with pytest.raises(GenloomError, match="give an init image too"):
        diffuse(model, TOKENIZER, vae, ["a red circle"], strength=0.5, progress=False)
    other = VAE(dataclasses.replace(VAE_CONFIG, latent_channels=3))
    with pytest.raises(GenloomError, match="makes latents of shape 3x8x8 but the denoiser denoises 4x8x8"):
        diffuse(model, TOKENIZER, other, ["a red circle"], progress=False)
