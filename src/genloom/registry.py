"""Model families by name, and loading any saved model: a genloom checkpoint or a Hugging Face directory.

A family is its config dataclass, its module, its presets and the sub-models ("components") it cannot work
without: a text-to-image model needs the VQ image tokenizer that decodes its codes. A component is a checkpoint
directory of its own, saved once into the run directory beside the step checkpoints and named in their
`config.json` (`"components": {"image_tokenizer": "vqvae"}`); it is found in the checkpoint directory itself,
else in its parent (the run directory), so a checkpoint moved with its components next to it still loads.
The generic `load_pretrained` loads every component and checks it against the model; the typed loaders below
(`load_language_model`, ...) only pick the family and name what they return.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from genloom.checkpoint import CONFIG_FILE, load_weights, read_checkpoint_config, resolve_checkpoint
from genloom.config import config_from_dict
from genloom.errors import GenloomError
from genloom.interop.hf_gpt2 import is_hf_directory, load_hf_gpt2
from genloom.models import clip, dalle, dit, gpt, lstm, seq2seq, vae, vqvae
from genloom.models.caption_image import check_image_tokenizer
from genloom.tokenizers import Tokenizer, check_tokenizer_fits, find_tokenizer


@dataclass
class LoadedModel:
    model: nn.Module
    config: Any
    tokenizer: Tokenizer | None  # None for a model that reads no text (the VQ image tokenizer)
    family: str
    path: Path
    components: dict[str, LoadedModel] = field(default_factory=dict)  # sub-models, by name


# A check that component `name` (loaded) fits `model` (loaded): a one-line GenloomError otherwise.
ComponentCheck = Callable[[LoadedModel, LoadedModel], None]


def _vq_makes_the_image_tokens(component: LoadedModel, model: LoadedModel) -> None:
    check_image_tokenizer(component.config, model.config, str(component.path), str(model.path))


def check_latent_shape(vae_config: vae.VAEConfig, dit_config: dit.DiTConfig, vae_name: str, dit_name: str) -> None:
    """A one-line GenloomError unless the autoencoder's latents are the shape the denoiser works on."""
    ours = vae_config.latent_shape
    theirs = (dit_config.latent_channels, dit_config.latent_size, dit_config.latent_size)
    if ours != theirs:
        raise GenloomError(f"{vae_name} makes latents of shape {'x'.join(map(str, ours))} but {dit_name} denoises "
                           f"{'x'.join(map(str, theirs))}; train the denoiser on this autoencoder")


def _vae_makes_the_latents(component: LoadedModel, model: LoadedModel) -> None:
    check_latent_shape(component.config, model.config, str(component.path), str(model.path))


@dataclass(frozen=True)
class Family:
    config: type[Any]
    module: type[nn.Module]
    preset: Callable[..., Any]  # preset(name, **overrides) -> config
    vocab_field: str | None  # the config field that must equal the tokenizer's vocabulary; None: reads no text
    components: Mapping[str, tuple[str, ComponentCheck]] = field(default_factory=dict)  # name -> (family, check)


IMAGE_TOKENIZER = "image_tokenizer"  # the component of dalle and clip runs: the VQ model that makes their codes
_IMAGE_TOKENIZER = {IMAGE_TOKENIZER: ("vqvae", _vq_makes_the_image_tokens)}
AUTOENCODER = "autoencoder"  # the component of dit runs: the VAE whose latents they denoise
FAMILIES: dict[str, Family] = {
    "gpt": Family(gpt.GPTConfig, gpt.GPT, gpt.preset, "vocab_size"),
    "seq2seq": Family(seq2seq.Seq2SeqConfig, seq2seq.Seq2SeqTransformer, seq2seq.preset, "vocab_size"),
    "lstm": Family(lstm.LSTMConfig, lstm.LSTMSeq2Seq, lstm.preset, "vocab_size"),
    "vqvae": Family(vqvae.VQConfig, vqvae.VQVAE, vqvae.preset, None),
    "vae": Family(vae.VAEConfig, vae.VAE, vae.preset, None),
    "dit": Family(dit.DiTConfig, dit.DiT, dit.preset, "text_vocab_size",
                  {AUTOENCODER: ("vae", _vae_makes_the_latents)}),
    "dalle": Family(dalle.DalleConfig, dalle.Dalle, dalle.preset, "text_vocab_size", _IMAGE_TOKENIZER),
    "clip": Family(clip.ClipConfig, clip.Clip, clip.preset, "text_vocab_size", _IMAGE_TOKENIZER),
}
TRANSLATION_FAMILIES = ("seq2seq", "lstm")


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise GenloomError(f"unknown model family {name!r}; choose from: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def preset_config(family_name: str, preset_name: str, **overrides: object) -> Any:
    """Preset `preset_name` of a family with `overrides`; an override of None keeps the preset's value (a flag
    the user did not give). An impossible combination (d_model vs n_heads, ...) is a one-line error."""
    chosen = {k: v for k, v in overrides.items() if v is not None}
    try:
        return family(family_name).preset(preset_name, **chosen)
    except ValueError as e:
        raise GenloomError(f"preset {preset_name!r}: {e}") from None


def build_model(family_name: str, config: Any) -> nn.Module:
    """A freshly initialised model of `family_name` (seed the RNG first for reproducible weights)."""
    return family(family_name).module(config)


def read_model_config(family_name: str, path: Path) -> Any:
    """The model config of the checkpoint (or run directory) `path`, which must hold a `family_name` model, read
    without its weights."""
    directory = resolve_checkpoint(path)
    raw = read_checkpoint_config(directory)
    if raw["family"] != family_name:
        raise GenloomError(f"{directory} holds a {raw['family']} model, not a {family_name} model")
    return config_from_dict(family(family_name).config, raw["model"], where=str(directory / CONFIG_FILE))


def load_pretrained(path: Path, weights: bool = True) -> LoadedModel:
    """Load a genloom checkpoint (or run directory), with its components, or a Hugging Face GPT-2 directory,
    in eval mode. `weights` False leaves a genloom model's weights at their initialisation (for a caller that
    loads them itself, such as the trainer on --resume)."""
    if is_hf_directory(path):
        gpt_model, gpt_tokenizer = load_hf_gpt2(path)
        return LoadedModel(gpt_model, gpt_model.config, gpt_tokenizer, "gpt", path)
    directory = resolve_checkpoint(path)
    raw = read_checkpoint_config(directory)
    if raw["family"] not in FAMILIES:
        raise GenloomError(f"{directory} holds an unknown model family {raw['family']!r}")
    spec = FAMILIES[raw["family"]]
    config = config_from_dict(spec.config, raw["model"], where=str(directory / CONFIG_FILE))
    tokenizer = find_tokenizer(directory)
    if spec.vocab_field is not None:
        if tokenizer is None:
            raise GenloomError(f"{directory} holds no tokenizer, which a {raw['family']} model needs")
        check_tokenizer_fits(tokenizer, getattr(config, spec.vocab_field), str(directory))
    model = spec.module(config)
    if weights:
        load_weights(model, directory)
    loaded = LoadedModel(model.eval(), config, tokenizer, raw["family"], directory)
    loaded.components = _load_components(loaded, spec, raw.get("components", {}))
    return loaded


def _load_components(loaded: LoadedModel, spec: Family, recorded: object) -> dict[str, LoadedModel]:
    """The components the family needs and those the checkpoint records, loaded and checked against it."""
    if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
        raise GenloomError(f"{loaded.path / CONFIG_FILE}: \"components\" must map names to model families")
    wanted: dict[str, tuple[str, ComponentCheck | None]] = {name: (fam, None) for name, fam in recorded.items()}
    wanted.update(spec.components)
    components = {}
    for name, (family_name, check) in wanted.items():
        candidates = [loaded.path / name, loaded.path.parent / name]
        found = next((c for c in candidates if (c / CONFIG_FILE).is_file()), None)
        if found is None:
            raise GenloomError(f"no {name}/ (the {family_name} model a {loaded.family} model needs) in "
                               f"{loaded.path} or {loaded.path.parent}")
        component = load_pretrained(found)
        if component.family != family_name:
            raise GenloomError(f"{found} is a {component.family} model, not the {family_name} model {name}/ must be")
        if check is not None:
            check(component, loaded)
        components[name] = component
    return components


def load_family(path: Path, families: tuple[str, ...], what: str) -> LoadedModel:
    """`load_pretrained(path)`, or a one-line error when it holds a model of none of `families`."""
    loaded = load_pretrained(path)
    if loaded.family not in families:
        raise GenloomError(f"{path} is a {loaded.family} model, not {what}")
    return loaded


@dataclass
class LoadedTextModel(LoadedModel):
    """A loaded model that reads text: its tokenizer is always there."""

    tokenizer: Tokenizer


def _text_model(loaded: LoadedModel) -> LoadedTextModel:
    assert loaded.tokenizer is not None, "load_pretrained checks that text models have their tokenizer"
    return LoadedTextModel(loaded.model, loaded.config, loaded.tokenizer, loaded.family, loaded.path,
                           loaded.components)


def load_language_model(path: Path) -> tuple[gpt.GPT, Tokenizer]:
    """A GPT and its tokenizer, or a one-line error when `path` holds another kind of model."""
    loaded = _text_model(load_family(path, ("gpt",), "a language model"))
    assert isinstance(loaded.model, gpt.GPT)
    return loaded.model, loaded.tokenizer


def load_translation_model(path: Path) -> LoadedTextModel:
    """A seq2seq or LSTM translation model with its tokenizer, or a one-line error for any other model."""
    return _text_model(load_family(path, TRANSLATION_FAMILIES, "a translation model (seq2seq or lstm)"))


def load_image_tokenizer(path: Path) -> vqvae.VQVAE:
    """The VQ model of a genloom checkpoint or run directory, in eval mode; a one-line error for anything else."""
    model = load_family(path, ("vqvae",), "a VQ image tokenizer (vqvae)").model
    assert isinstance(model, vqvae.VQVAE)
    return model


@dataclass
class LoadedTextToImage:
    """A text-to-image Transformer with its caption tokenizer and the VQ model that decodes its codes."""

    model: dalle.Dalle
    tokenizer: Tokenizer
    vq: vqvae.VQVAE
    path: Path  # the text-to-image checkpoint directory


def _with_image_tokenizer(path: Path, family_name: str, what: str) -> tuple[LoadedTextModel, vqvae.VQVAE]:
    loaded = _text_model(load_family(path, (family_name,), what))
    vq = loaded.components[IMAGE_TOKENIZER].model
    assert isinstance(vq, vqvae.VQVAE)
    return loaded, vq


def load_text_to_image_model(path: Path) -> LoadedTextToImage:
    """A dalle checkpoint (or run directory) and the VQ model that decodes its codes, in eval mode."""
    loaded, vq = _with_image_tokenizer(path, "dalle", "a text-to-image model (dalle)")
    assert isinstance(loaded.model, dalle.Dalle)
    return LoadedTextToImage(loaded.model, loaded.tokenizer, vq, loaded.path)


@dataclass
class LoadedClip:
    """A CLIP-style reranker with its caption tokenizer and the VQ model whose codes it reads."""

    model: clip.Clip
    tokenizer: Tokenizer
    vq: vqvae.VQVAE
    path: Path


def load_clip_model(path: Path) -> LoadedClip:
    """A clip checkpoint (or run directory) and the VQ model whose codes it reads, in eval mode."""
    loaded, vq = _with_image_tokenizer(path, "clip", "a CLIP reranker (clip)")
    assert isinstance(loaded.model, clip.Clip)
    return LoadedClip(loaded.model, loaded.tokenizer, vq, loaded.path)


@dataclass
class LoadedLatentDiffusion:
    """A diffusion Transformer with its caption tokenizer and the VAE that decodes its latents."""

    model: dit.DiT
    tokenizer: Tokenizer
    vae: vae.VAE
    path: Path  # the denoiser's checkpoint directory


TEXT_TO_IMAGE_FAMILIES = ("dalle", "dit")


def load_image_generator(path: Path) -> LoadedTextToImage | LoadedLatentDiffusion:
    """A text-to-image checkpoint of either method, the token one (dalle) or latent diffusion (dit), in eval
    mode with the model that turns its output into pixels."""
    loaded = _text_model(load_family(path, TEXT_TO_IMAGE_FAMILIES, "a text-to-image model (dalle or dit)"))
    if isinstance(loaded.model, dit.DiT):
        autoencoder = loaded.components[AUTOENCODER].model
        assert isinstance(autoencoder, vae.VAE)
        return LoadedLatentDiffusion(loaded.model, loaded.tokenizer, autoencoder, loaded.path)
    assert isinstance(loaded.model, dalle.Dalle)
    vq = loaded.components[IMAGE_TOKENIZER].model
    assert isinstance(vq, vqvae.VQVAE)
    return LoadedTextToImage(loaded.model, loaded.tokenizer, vq, loaded.path)
