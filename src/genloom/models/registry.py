"""Model families by name, and loading any saved model: a genloom checkpoint or a Hugging Face directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from genloom.config import config_from_dict, read_json
from genloom.errors import GenloomError
from genloom.models.clip import Clip, ClipConfig
from genloom.models.dalle import Dalle, DalleConfig, check_image_tokenizer
from genloom.models.gpt import GPT, GPTConfig
from genloom.models.lstm import LSTMConfig, LSTMSeq2Seq
from genloom.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from genloom.models.vqvae import VQVAE, VQConfig
from genloom.tokenizers import Tokenizer, find_tokenizer
from genloom.train.checkpoint import CONFIG_FILE, load_weights, read_checkpoint_config, resolve_checkpoint

FAMILIES: dict[str, tuple[type[Any], type[nn.Module]]] = {
    "gpt": (GPTConfig, GPT),
    "seq2seq": (Seq2SeqConfig, Seq2SeqTransformer),
    "lstm": (LSTMConfig, LSTMSeq2Seq),
    "vqvae": (VQConfig, VQVAE),
    "dalle": (DalleConfig, Dalle),
    "clip": (ClipConfig, Clip),
}


@dataclass
class LoadedModel:
    model: nn.Module
    config: Any
    tokenizer: Tokenizer | None  # None for a model that reads no text (the VQ image tokenizer)
    family: str
    path: Path


@dataclass
class LoadedTextModel(LoadedModel):
    """A loaded model that reads text: its tokenizer is always there."""

    tokenizer: Tokenizer


def _with_tokenizer(loaded: LoadedModel) -> LoadedTextModel:
    if loaded.tokenizer is None:
        raise GenloomError(f"{loaded.path} holds no tokenizer, which a {loaded.family} model needs")
    return LoadedTextModel(loaded.model, loaded.config, loaded.tokenizer, loaded.family, loaded.path)


def load_pretrained(path: Path) -> LoadedModel:
    """Load a genloom checkpoint (or run directory) or a Hugging Face GPT-2 directory, in eval mode."""
    if (path / CONFIG_FILE).is_file() and "model_type" in read_json(path / CONFIG_FILE):
        from genloom.interop.hf_gpt2 import load_hf_gpt2

        return load_hf_gpt2(path)
    directory = resolve_checkpoint(path)
    raw = read_checkpoint_config(directory)
    family = raw["family"]
    if family not in FAMILIES:
        raise GenloomError(f"{directory} holds an unknown model family {family!r}")
    config_cls, model_cls = FAMILIES[family]
    config = config_from_dict(config_cls, raw["model"])
    model = model_cls(config)
    load_weights(model, directory)
    model.eval()
    return LoadedModel(model, config, find_tokenizer(directory), family, directory)


def load_language_model(path: Path) -> tuple[GPT, Tokenizer]:
    """A GPT and its tokenizer, or a one-line error when `path` holds another kind of model."""
    loaded = load_pretrained(path)
    if not isinstance(loaded.model, GPT):
        raise GenloomError(f"{path} is a {loaded.family} model, not a language model")
    return loaded.model, _with_tokenizer(loaded).tokenizer


TRANSLATION_FAMILIES = ("seq2seq", "lstm")


def load_translation_model(path: Path) -> LoadedTextModel:
    """A seq2seq or LSTM translation model with its tokenizer, or a one-line error for any other model."""
    loaded = load_pretrained(path)
    if loaded.family not in TRANSLATION_FAMILIES:
        raise GenloomError(f"{path} is a {loaded.family} model, not a translation model (seq2seq or lstm)")
    return _with_tokenizer(loaded)


@dataclass
class LoadedTextToImage:
    """A text-to-image Transformer with its caption tokenizer and the VQ model that decodes its codes."""

    model: Dalle
    tokenizer: Tokenizer
    vq: VQVAE
    path: Path  # the text-to-image checkpoint directory


def load_text_to_image_model(path: Path) -> LoadedTextToImage:
    """A dalle checkpoint (or run directory) and the VQ model in `image_tokenizer/` beside it, in eval mode.

    The VQ model is looked for in the checkpoint directory itself, then in its parent (the run directory).
    """
    loaded = load_pretrained(path)
    if not isinstance(loaded.model, Dalle):
        raise GenloomError(f"{path} is a {loaded.family} model, not a text-to-image model (dalle)")
    tokenizer = _with_tokenizer(loaded).tokenizer
    vq = _image_tokenizer_beside(loaded)
    return LoadedTextToImage(loaded.model, tokenizer, vq, loaded.path)


@dataclass
class LoadedClip:
    """A CLIP-style reranker with its caption tokenizer and the VQ model whose codes it reads."""

    model: Clip
    tokenizer: Tokenizer
    vq: VQVAE
    path: Path


def load_clip_model(path: Path) -> LoadedClip:
    """A clip checkpoint (or run directory) and the VQ model in `image_tokenizer/` beside it, in eval mode."""
    loaded = load_pretrained(path)
    if not isinstance(loaded.model, Clip):
        raise GenloomError(f"{path} is a {loaded.family} model, not a CLIP reranker (clip)")
    return LoadedClip(loaded.model, _with_tokenizer(loaded).tokenizer, _image_tokenizer_beside(loaded), loaded.path)


def _image_tokenizer_beside(loaded: LoadedModel) -> VQVAE:
    """The VQ model of a model over image tokens: `image_tokenizer/` in its checkpoint directory, else in its
    parent (the run directory); checked against the model's grid and vocabulary."""
    from genloom.train.text_to_image import IMAGE_TOKENIZER_DIR, load_image_tokenizer

    candidates = [loaded.path / IMAGE_TOKENIZER_DIR, loaded.path.parent / IMAGE_TOKENIZER_DIR]
    found = next((c for c in candidates if (c / CONFIG_FILE).is_file()), None)
    if found is None:
        raise GenloomError(f"no {IMAGE_TOKENIZER_DIR}/ (the VQ model that decodes the images) in {loaded.path} "
                           f"or {loaded.path.parent}")
    vq = load_image_tokenizer(found)
    check_image_tokenizer(vq.config, loaded.config, str(found), str(loaded.path))
    return vq
