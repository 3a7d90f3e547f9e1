"""Text -> image sampling: per-image seeds, guidance, cached vs uncached decoding, saving PNGs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from genloom.data.builtin_images import OPENMOJI_ATTRIBUTION
from genloom.data.captions import CaptionCodec, train_caption_tokenizer
from genloom.errors import GenloomError
from genloom.generate.image_io import read_png_metadata, save_images
from genloom.generate.imagine import imagine
from genloom.models.dalle import Dalle, DalleConfig
from genloom.models.vqvae import VQVAE, VQConfig
from genloom.tokenizers import BPETokenizer

CAPTIONS = ["a red circle", "a blue square above a green triangle", "a cyan triangle", "a yellow square"]


@pytest.fixture(scope="module")
def parts() -> tuple[Dalle, BPETokenizer, VQVAE]:
    tokenizer = train_caption_tokenizer(CAPTIONS, 300)
    torch.manual_seed(0)
    vq = VQVAE(VQConfig(resolution=8, widths=(8, 8), res_blocks=1, norm_groups=4, codebook_size=16)).eval()
    pad = CaptionCodec(tokenizer, 12).ids.pad
    model = Dalle(DalleConfig(
        text_vocab_size=tokenizer.vocab_size, text_len=12, image_vocab_size=16, grid_size=vq.config.grid_size,
        d_model=32, n_layers=2, n_heads=4, d_ff=64, pad_id=pad,
    )).eval()
    with torch.no_grad():  # an opinionated random model: prompts and seeds change what it draws
        for p in model.parameters():
            p.normal_(0.0, 0.6)
    return model, tokenizer, vq


def run(parts, prompts, **kw):
    model, tokenizer, vq = parts
    kw.setdefault("progress", False)
    return imagine(model, tokenizer, vq, prompts, **kw)


def test_shapes_and_dtype(parts) -> None:
    images, codes = run(parts, ["a red circle", "a cyan triangle"], n_images=3, seed=0)
    assert images.shape == (6, 8, 8, 3) and images.dtype == np.uint8
    assert codes.shape == (6, 4, 4) and int(codes.max()) < 16


def test_per_image_seed_alone_equals_batched_with_guidance(parts) -> None:
    prompts = ["a red circle", "a blue square above a green triangle"]
    kw = {"temperature": 1.0, "top_k": 10, "guidance_scale": 3.0}
    _, batched = run(parts, prompts, n_images=2, seed=7, **kw)
    for i in range(4):
        _, alone = run(parts, [prompts[i // 2]], n_images=1, seed=7 + i, **kw)
        assert torch.equal(alone[0], batched[i]), i
    assert not torch.equal(batched[0], batched[1])  # different seeds, different images


def test_guidance_scale_one_is_conditional_and_zero_unconditional(parts) -> None:
    prompt = ["a blue square above a green triangle"]
    _, plain = run(parts, prompt, n_images=3, seed=3)
    _, guided_one = run(parts, prompt, n_images=3, seed=3, guidance_scale=1.0)
    assert torch.equal(plain, guided_one)
    _, scale_zero = run(parts, prompt, n_images=3, seed=3, guidance_scale=0.0)
    _, empty = run(parts, [""], n_images=3, seed=3)  # the empty caption is the unconditional input
    assert torch.equal(scale_zero, empty)
    assert not torch.equal(plain, empty)


def test_guided_logits_follow_the_formula(parts) -> None:
    model, tokenizer, _ = parts
    codec = CaptionCodec(tokenizer, model.config.text_len)
    prompt = "a red circle"
    with torch.no_grad():
        cond = model.next_image_logits(codec.encode([prompt]), None)[0]
        uncond = model.next_image_logits(codec.empty(), None)[0]
    for scale in (0.5, 4.0):
        _, codes = run(parts, [prompt], temperature=0.0, guidance_scale=scale)
        assert int(codes[0, 0, 0]) == int((uncond + scale * (cond - uncond)).argmax())


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_uncached_equals_cached_greedy(parts, guidance: float) -> None:
    prompts = ["a red circle", "a yellow square"]
    _, cached = run(parts, prompts, n_images=2, temperature=0.0, guidance_scale=guidance, use_cache=True)
    _, uncached = run(parts, prompts, n_images=2, temperature=0.0, guidance_scale=guidance, use_cache=False)
    assert torch.equal(cached, uncached)
    _, top1 = run(parts, prompts, n_images=2, top_k=1, seed=1, guidance_scale=guidance, use_cache=False)
    assert torch.equal(cached, top1)


def test_errors(parts) -> None:
    with pytest.raises(GenloomError, match="more than the model's 12"):
        run(parts, ["a red circle " * 10])
    with pytest.raises(GenloomError, match="n_images"):
        run(parts, ["a red circle"], n_images=0)
    with pytest.raises(GenloomError, match="no prompts"):
        run(parts, [])
    with pytest.raises(GenloomError, match="temperature"):
        run(parts, ["a red circle"], temperature=-1.0)


def test_save_images_metadata_round_trip(parts, tmp_path) -> None:
    images, _ = run(parts, ["a red circle", "a cyan triangle"], n_images=2, seed=11, guidance_scale=2.0)
    params = {"temperature": 1.0, "top_k": None, "top_p": 0.9, "guidance_scale": 2.0, "seed": 11, "model": "m"}
    prompts = ["a red circle", "a cyan triangle"]
    saved = save_images(images, tmp_path / "out", prompts, params, data_name="builtin:emoji",
                        attribution=OPENMOJI_ATTRIBUTION)
    assert len(saved.images) == len(saved.sidecars) == 4 and saved.grid.is_file()
    for i, (png, sidecar) in enumerate(zip(saved.images, saved.sidecars, strict=True)):
        meta = read_png_metadata(png)
        side = json.loads(sidecar.read_text())
        prompt = "a red circle" if i < 2 else "a cyan triangle"
        expected = {**params, "image_seed": 11 + i, "index": i, "data": "builtin:emoji"}
        assert meta["prompt"] == side["prompt"] == prompt
        assert meta["parameters"] == side["parameters"] == expected
        assert meta["attribution"] == side["attribution"] == OPENMOJI_ATTRIBUTION
        assert np.array_equal(np.asarray(Image.open(png)), images[i])  # lossless
    grid = read_png_metadata(saved.grid)
    assert grid["prompts"] == ["a red circle"] * 2 + ["a cyan triangle"] * 2
    assert grid["attribution"] == OPENMOJI_ATTRIBUTION
    # Not emoji: no attribution; a non-Latin-1 prompt survives.
    prompt = "ein Kreis – rot ✓"
    other = save_images(images[:1], tmp_path / "plain", [prompt], {"seed": None}, data_name="builtin:shapes")
    meta = read_png_metadata(other.images[0])
    assert meta["prompt"] == prompt and "attribution" not in meta
    assert "image_seed" not in meta["parameters"]
    with pytest.raises(GenloomError, match="do not divide"):
        save_images(images, tmp_path / "bad", ["a", "b", "c"], {})


def test_saving_again_replaces_an_earlier_output_and_nothing_else(parts, tmp_path) -> None:
    images, _ = run(parts, ["a red circle"], n_images=3, seed=0)
    save_images(images, tmp_path / "out", ["a red circle"], {"seed": 0})
    saved = save_images(images[:1], tmp_path / "out", ["a blue square"], {"seed": 1})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000-a-blue-square.json",
                                                                     "000-a-blue-square.png", "grid.png"]
    assert saved.images == [tmp_path / "out" / "000-a-blue-square.png"]
    (tmp_path / "out" / "my-notes.txt").write_text("mine")
    with pytest.raises(GenloomError, match="is not a folder of images genloom generated"):
        save_images(images, tmp_path / "out", ["a red circle"], {"seed": 0})
    assert (tmp_path / "out" / "my-notes.txt").read_text() == "mine"
