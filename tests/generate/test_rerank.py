"""Best-of-N reranking: the kept images are the candidates the reranker scores highest, each redrawable by its seed."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from genloom.data.captions import CaptionCodec, train_caption_tokenizer
from genloom.errors import GenloomError
from genloom.generate.diffuse import DiffusionSampling, diffuse
from genloom.generate.imagine import encode_images, imagine
from genloom.generate.rerank import check_same_image_tokenizer, clip_scores, imagine_best_of
from genloom.models.clip import Clip, ClipConfig
from genloom.models.dalle import Dalle, DalleConfig
from genloom.models.dit import DiT, DiTConfig
from genloom.models.vae import VAE, VAEConfig
from genloom.models.vqvae import VQVAE, VQConfig
from genloom.registry import LoadedClip, LoadedLatentDiffusion, LoadedTextToImage

CAPTIONS = ["a red circle", "a blue square above a green triangle", "a cyan triangle"]


@pytest.fixture(scope="module")
def models() -> tuple[LoadedTextToImage, LoadedClip]:
    tokenizer = train_caption_tokenizer(CAPTIONS, 300)
    pad = CaptionCodec(tokenizer, 12).ids.pad
    torch.manual_seed(0)
    vq = VQVAE(VQConfig(resolution=8, widths=(8, 8), res_blocks=1, norm_groups=4, codebook_size=16)).eval()
    dalle = Dalle(DalleConfig(text_vocab_size=tokenizer.vocab_size, text_len=12, image_vocab_size=16, grid_size=4,
                              d_model=32, n_layers=1, n_heads=4, d_ff=64, pad_id=pad)).eval()
    with torch.no_grad():  # an opinionated random model: seeds change what it draws
        for p in dalle.parameters():
            p.normal_(0.0, 0.6)
    clip = Clip(ClipConfig(text_vocab_size=tokenizer.vocab_size, text_len=12, pad_id=pad, image_vocab_size=16,
                           grid_size=4, d_model=16, n_layers=1, n_heads=2, d_ff=32, embed_dim=8)).eval()
    # The reranker carries its own copy of the same VQ model, as `genloom train clip` saves it.
    return (LoadedTextToImage(dalle, tokenizer, vq, Path("t2i")),
            LoadedClip(clip, tokenizer, copy.deepcopy(vq), Path("clip")))


def test_keeps_the_highest_scoring_candidates_with_their_seeds(models: tuple[LoadedTextToImage, LoadedClip]) -> None:
    generator, reranker = models
    prompts = CAPTIONS[:2]
    best = imagine_best_of(generator, reranker, prompts, n_images=2, candidates=5, seed=10, progress=False)
    _, candidates = imagine(generator.model, generator.tokenizer, generator.vq, prompts, n_images=5, seed=10,
                            progress=False)
    scores = clip_scores(reranker, prompts, candidates)  # (2, 5)
    assert best.images.shape == (4, 8, 8, 3) and best.codes.shape == (4, 4, 4)
    expected = scores.sort(dim=1, descending=True).values[:, :2].flatten()
    torch.testing.assert_close(best.scores, expected)
    assert best.seeds is not None and len(best.seeds) == 4
    for i, seed in enumerate(best.seeds):
        prompt = prompts[i // 2]
        assert 10 + 5 * (i // 2) <= seed < 10 + 5 * (i // 2 + 1)  # one of its own prompt's candidates
        _, alone = imagine(generator.model, generator.tokenizer, generator.vq, [prompt], seed=seed, progress=False)
        assert torch.equal(alone[0], best.codes[i])  # the recorded seed redraws the kept image


def test_scores_are_the_reranker_cosines(models: tuple[LoadedTextToImage, LoadedClip]) -> None:
    _, reranker = models
    codes = torch.randint(16, (6, 4, 4))
    scores = clip_scores(reranker, CAPTIONS[:2], codes)
    text = CaptionCodec(reranker.tokenizer, 12).encode([CAPTIONS[0]] * 3 + [CAPTIONS[1]] * 3)
    with torch.no_grad():
        torch.testing.assert_close(scores.flatten(), reranker.model.score(text, codes))


def test_refuses_fewer_candidates_or_another_image_tokenizer(models: tuple[LoadedTextToImage, LoadedClip]) -> None:
    generator, reranker = models
    with pytest.raises(GenloomError, match="draw at least as many"):
        imagine_best_of(generator, reranker, CAPTIONS[:1], n_images=3, candidates=2)
    other = copy.deepcopy(reranker.vq)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(GenloomError, match="different VQ image tokenizers"):
        check_same_image_tokenizer(generator.vq, other, "t2i", "clip")
    check_same_image_tokenizer(generator.vq, reranker.vq, "t2i", "clip")


def test_diffusion_samples_are_reranked_through_the_rerankers_vq(models) -> None:
    _, reranker = models
    tokenizer = reranker.tokenizer
    torch.manual_seed(1)
    dit = DiT(DiTConfig(latent_size=4, d_model=32, n_layers=1, n_heads=4, d_ff=64, text_vocab_size=tokenizer.vocab_size,
                        text_len=12, text_layers=1, pad_id=CaptionCodec(tokenizer, 12).ids.pad)).eval()
    for layer in (dit.final.proj, dit.final.modulation, *(b.modulation for b in dit.blocks)):
        torch.nn.init.normal_(layer.weight, std=0.1)  # an output that depends on the input and the seed
    generator = LoadedLatentDiffusion(dit, tokenizer, VAE(VAEConfig(resolution=8, widths=(8, 8), res_blocks=1,
                                                                    norm_groups=4)).eval(), Path("dit"))
    sampling = DiffusionSampling(steps=3)
    best = imagine_best_of(generator, reranker, CAPTIONS[:1], n_images=2, candidates=4, seed=0, progress=False,
                           sampling=sampling)
    candidates, _ = diffuse(dit, tokenizer, generator.vae, CAPTIONS[:1], n_images=4, seed=0, sampling=sampling,
                            progress=False)
    codes = encode_images(reranker.vq, candidates).view(4, 4, 4)  # the reranker reads its own VQ's codes
    expected = clip_scores(reranker, CAPTIONS[:1], codes).sort(dim=1, descending=True).values[0, :2]
    torch.testing.assert_close(best.scores, expected)
    assert best.seeds is not None and all((candidates[s] == image).all() for s, image in zip(best.seeds, best.images,
                                                                                             strict=True))
