"""The registry: every family saves and loads back to the same outputs; components load generically."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from genloom.checkpoint import save_checkpoint
from genloom.diffusion.process import DiffusionConfig
from genloom.errors import GenloomError
from genloom.models.clip import ClipConfig
from genloom.models.dalle import DalleConfig
from genloom.models.dit import DiTConfig
from genloom.models.gpt import GPTConfig
from genloom.models.lstm import LSTMConfig
from genloom.models.seq2seq import Seq2SeqConfig
from genloom.models.vae import VAEConfig
from genloom.models.vqvae import VQConfig
from genloom.registry import (
    FAMILIES,
    LoadedLatentDiffusion,
    build_model,
    load_image_generator,
    load_pretrained,
    load_text_to_image_model,
    preset_config,
)
from genloom.tokenizers import SPECIAL_TOKENS, BPETokenizer, CharTokenizer, Tokenizer

VQ = VQConfig(resolution=8, widths=(8, 8), res_blocks=1, norm_groups=4, codebook_size=16, code_dim=4)  # 4x4
CAPTIONS = BPETokenizer.train(["a red circle", "a blue square"], 300, special_tokens=list(SPECIAL_TOKENS))
CHARS = CharTokenizer.train("abcdefg")


def _config(family: str, tokenizer: Tokenizer) -> object:
    v = tokenizer.vocab_size
    pad = 1 if family in ("dalle", "clip") else 0
    tiny = {
        "gpt": GPTConfig(vocab_size=v, context_length=8, n_layers=1, d_model=16, n_heads=2),
        "seq2seq": Seq2SeqConfig(vocab_size=v, max_len=8, n_encoder_layers=1, n_decoder_layers=1, d_model=16,
                                 n_heads=2, d_ff=32),
        "lstm": LSTMConfig(vocab_size=v, embed_dim=8, hidden_size=8),
        "vqvae": VQ,
        "vae": VAEConfig(resolution=8, widths=(8, 8), res_blocks=1, norm_groups=4),
        "dit": DiTConfig(latent_size=4, patch_size=2, d_model=16, n_layers=1, n_heads=2, d_ff=32, text_vocab_size=v,
                         text_len=6, text_layers=1, pad_id=1),
        "dalle": DalleConfig(text_vocab_size=v, text_len=6, image_vocab_size=16, grid_size=4, d_model=16,
                             n_layers=1, n_heads=2, d_ff=32, pad_id=pad),
        "clip": ClipConfig(text_vocab_size=v, text_len=6, image_vocab_size=16, grid_size=4, d_model=16, n_layers=1,
                           n_heads=2, d_ff=32, embed_dim=8, pad_id=pad),
    }
    return tiny[family]


def _inputs(family: str) -> tuple[torch.Tensor, ...]:
    text, codes = torch.tensor([[2, 5, 3, 1, 1, 1]]), torch.arange(16)[None] % 16
    return {
        "gpt": (torch.tensor([[1, 2, 3]]),),
        "seq2seq": (torch.tensor([[3, 4, 5]]), torch.tensor([[1, 2]])),
        "lstm": (torch.tensor([[3, 4, 5]]), torch.tensor([[1, 2]])),
        "vqvae": (torch.rand(1, 3, 8, 8) * 2 - 1,),
        "vae": (torch.rand(1, 3, 8, 8) * 2 - 1,),
        "dit": (torch.randn(1, 4, 4, 4), torch.tensor([500]), torch.tensor([[2, 5, 3, 1, 1, 1]])),
        "dalle": (text, codes),
        "clip": (text, codes),
    }[family]


def _outputs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    torch.manual_seed(0)  # the same draws for a model that samples (the VAE's posterior)
    with torch.no_grad():
        out = model(*inputs)
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_round_trips_through_a_checkpoint(family: str, tmp_path: Path) -> None:
    tokenizer = CAPTIONS if family in ("dalle", "clip", "dit") else CHARS
    config = _config(family, tokenizer)
    torch.manual_seed(0)
    model = build_model(family, config).eval()
    run = tmp_path / "run"
    components = {}
    if family == "dit":  # a run that carries its autoencoder (8x8 images -> 4x4x4 latents)
        autoencoder = _config("vae", CHARS)
        save_checkpoint(run / "autoencoder", build_model("vae", autoencoder), "vae", autoencoder, None)
        components = {"autoencoder": "vae"}
    elif FAMILIES[family].components:  # a run that carries its VQ image tokenizer
        vq = build_model("vqvae", VQ)
        save_checkpoint(run / "image_tokenizer", vq, "vqvae", VQ, None)
        components = {"image_tokenizer": "vqvae"}
    text = None if family in ("vqvae", "vae") else tokenizer
    save_checkpoint(run / "checkpoint-0000001", model, family, config, text, metadata={"components": components})
    loaded = load_pretrained(run)  # the run directory: its latest checkpoint
    assert loaded.family == family and loaded.config == config and not loaded.model.training
    assert set(loaded.components) == set(components)
    inputs = _inputs(family)
    for mine, theirs in zip(_outputs(model, inputs), _outputs(loaded.model, inputs), strict=True):
        torch.testing.assert_close(theirs, mine)


def test_a_component_is_found_in_the_checkpoint_or_its_run_and_checked(tmp_path: Path) -> None:
    config = _config("dalle", CAPTIONS)
    run = tmp_path / "run"
    save_checkpoint(run / "best", build_model("dalle", config), "dalle", config, CAPTIONS)
    with pytest.raises(GenloomError, match="no image_tokenizer/"):
        load_pretrained(run / "best")
    save_checkpoint(run / "image_tokenizer", build_model("vqvae", VQ), "vqvae", VQ, None)
    assert load_text_to_image_model(run / "best").vq.config == VQ  # beside the checkpoint, in its run directory
    shutil.move(run / "image_tokenizer", run / "best" / "image_tokenizer")
    assert load_text_to_image_model(run / "best").vq.config == VQ  # or inside the checkpoint, copied with it
    # A VQ model that makes other tokens than the model reads is refused with one line.
    other = VQConfig(resolution=8, widths=(8, 8), res_blocks=1, norm_groups=4, codebook_size=32, code_dim=4)
    save_checkpoint(run / "best" / "image_tokenizer", build_model("vqvae", other), "vqvae", other, None)
    with pytest.raises(GenloomError, match=r"makes 4x4 grids of 32 tokens; .* expects 4x4 grids of 16 tokens"):
        load_pretrained(run / "best")


def test_a_denoiser_loads_with_its_autoencoder_and_process_and_refuses_other_latents(tmp_path: Path) -> None:
    config = dataclasses.replace(_config("dit", CAPTIONS), process=DiffusionConfig(objective="flow", flow_shift=3.0))
    autoencoder = _config("vae", CHARS)
    save_checkpoint(tmp_path / "run" / "autoencoder", build_model("vae", autoencoder), "vae", autoencoder, None)
    save_checkpoint(tmp_path / "run" / "best", build_model("dit", config), "dit", config, CAPTIONS)
    loaded = load_image_generator(tmp_path / "run" / "best")
    assert isinstance(loaded, LoadedLatentDiffusion) and loaded.model.config.process.flow_shift == 3.0
    raw = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert raw["model"]["process"]["objective"] == "flow"  # the process is part of the saved model config
    raw["model"]["process"]["objective"] = "score"
    (tmp_path / "run" / "best" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(GenloomError, match=r"process: objective must be one of \"ddpm\", \"flow\""):
        load_pretrained(tmp_path / "run" / "best")
    other = dataclasses.replace(autoencoder, latent_channels=3)
    save_checkpoint(tmp_path / "run" / "autoencoder", build_model("vae", other), "vae", other, None)
    save_checkpoint(tmp_path / "run" / "best", build_model("dit", config), "dit", config, CAPTIONS)
    with pytest.raises(GenloomError, match=r"makes latents of shape 3x4x4 but .* denoises 4x4x4"):
        load_image_generator(tmp_path / "run" / "best")


def test_components_named_in_the_config_load_for_any_family(tmp_path: Path) -> None:
    config = _config("gpt", CHARS)
    save_checkpoint(tmp_path / "helper", build_model("vqvae", VQ), "vqvae", VQ, None)
    save_checkpoint(tmp_path / "ckpt", build_model("gpt", config), "gpt", config, CHARS,
                    metadata={"components": {"helper": "vqvae"}})
    assert load_pretrained(tmp_path / "ckpt").components["helper"].config == VQ
    raw = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**raw, "components": {"helper": "gpt"}}))
    with pytest.raises(GenloomError, match="helper is a vqvae model, not the gpt model helper/ must be"):
        load_pretrained(tmp_path / "ckpt")


def test_preset_config_keeps_the_preset_where_a_flag_is_none() -> None:
    config = preset_config("gpt", "tiny", n_layers=None, d_model=64, vocab_size=10)
    assert (config.n_layers, config.d_model, config.vocab_size) == (4, 64, 10)
    with pytest.raises(GenloomError, match="unknown preset 'huge'"):
        preset_config("gpt", "huge")
    with pytest.raises(GenloomError, match="unknown model family 'rnn'"):
        preset_config("rnn", "tiny")
