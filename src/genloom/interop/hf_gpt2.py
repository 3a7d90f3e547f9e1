"""Hugging Face GPT-2 directories <-> genloom GPT.

GPT-2 is our GPT with learned positions, LayerNorm and biases, so the mapping is exact: only names
change (our `Linear` stores (in, out) matrices, as HF's `Conv1D` does, so nothing is transposed). Configs that
transformers can express but we cannot reproduce exactly (and vice versa) are refused, never
approximated: a model that loads must give the same logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from genloom.checkpoint import atomic_directory, load_state
from genloom.config import read_json
from genloom.errors import GenloomError, first_line
from genloom.models.gpt import GPT, GPTConfig
from genloom.nn.layers import Activation
from genloom.tokenizers import Tokenizer, check_tokenizer_fits, load_tokenizer

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
PYTORCH_FILE = "pytorch_model.bin"

# HF activation names whose function we compute exactly ("gelu_new" and "gelu_pytorch_tanh" are both
# the tanh approximation of GELU).
_ACTIVATIONS_FROM_HF: dict[str, Activation] = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
}
_ACTIVATIONS_TO_HF: dict[str, str] = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}

# Causal-mask buffers older transformers versions saved with every layer; they carry no weights.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")

# Per layer: HF name -> our name.
_LAYER_NAMES: dict[str, str] = {
    "ln_1.weight": "attn_norm.weight",
    "ln_1.bias": "attn_norm.bias",
    "attn.c_attn.weight": "attn.qkv_proj.weight",
    "attn.c_attn.bias": "attn.qkv_proj.bias",
    "attn.c_proj.weight": "attn.out_proj.weight",
    "attn.c_proj.bias": "attn.out_proj.bias",
    "ln_2.weight": "mlp_norm.weight",
    "ln_2.bias": "mlp_norm.bias",
    "mlp.c_fc.weight": "mlp.fc_in.weight",
    "mlp.c_fc.bias": "mlp.fc_in.bias",
    "mlp.c_proj.weight": "mlp.fc_out.weight",
    "mlp.c_proj.bias": "mlp.fc_out.bias",
}
_TOP_NAMES: dict[str, str] = {
    "wte.weight": "token_embedding.weight",
    "wpe.weight": "position_embedding.weight",
    "ln_f.weight": "transformer.final_norm.weight",
    "ln_f.bias": "transformer.final_norm.bias",
}


def _name_map(n_layers: int) -> dict[str, str]:
    """HF name (without the `transformer.` prefix) -> our name, for every trunk weight."""
    names = dict(_TOP_NAMES)
    for i in range(n_layers):
        for hf, ours in _LAYER_NAMES.items():
            names[f"h.{i}.{hf}"] = f"transformer.blocks.{i}.{ours}"
    return names


_NUMBER = (int, float)
_OPTIONAL_INT = (int, type(None))
_KIND_NAMES: dict[type | tuple[type, ...], str] = {
    bool: "true or false", int: "an integer", str: "a string", _NUMBER: "a number",
    _OPTIONAL_INT: "an integer or null",
}


def _get(raw: dict[str, Any], key: str, default: Any, kind: type | tuple[type, ...], where: Path) -> Any:
    """raw[key] (or transformers' default when absent), checked against `kind`."""
    value = raw.get(key, default)
    # bool is an int subclass; a true/false where a size belongs is a broken config, not 1 or 0.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise GenloomError(f"{where}: {key} must be {_KIND_NAMES[kind]}, got {value!r}")
    return value


def config_from_hf(raw: dict[str, Any], where: Path) -> GPTConfig:
    """GPTConfig equivalent to HF GPT2Config `raw`; GenloomError for anything we cannot reproduce exactly."""
    model_type = raw.get("model_type")
    if model_type != "gpt2":
        raise GenloomError(f"{where}: model_type {model_type!r} is not supported; only 'gpt2' can be loaded")
    # Defaults are GPT2Config's, so a config.json that omits a key means what it means to transformers.
    if not _get(raw, "scale_attn_weights", True, bool, where):
        raise GenloomError(f"{where}: scale_attn_weights=false (unscaled attention) is not supported")
    if _get(raw, "scale_attn_by_inverse_layer_idx", False, bool, where):
        raise GenloomError(f"{where}: scale_attn_by_inverse_layer_idx=true is not supported")
    if _get(raw, "add_cross_attention", False, bool, where):
        raise GenloomError(f"{where}: add_cross_attention=true is not supported (GPT is decoder-only)")
    hf_activation = _get(raw, "activation_function", "gelu_new", str, where)
    if hf_activation not in _ACTIVATIONS_FROM_HF:
        raise GenloomError(
            f"{where}: activation_function {hf_activation!r} is not supported; "
            f"expected one of {', '.join(_ACTIVATIONS_FROM_HF)}"
        )
    d_ff = _get(raw, "n_inner", None, _OPTIONAL_INT, where)
    if d_ff is not None and d_ff <= 0:
        raise GenloomError(f"{where}: n_inner ({d_ff}) must be positive or null")
    # genloom has one dropout rate; released GPT-2 configs set all three alike. Keep the largest if not.
    dropout = max(
        float(_get(raw, key, 0.1, _NUMBER, where)) for key in ("attn_pdrop", "resid_pdrop", "embd_pdrop")
    )
    try:
        return GPTConfig(
            vocab_size=_get(raw, "vocab_size", 50257, int, where),
            context_length=_get(raw, "n_positions", 1024, int, where),
            n_layers=_get(raw, "n_layer", 12, int, where),
            d_model=_get(raw, "n_embd", 768, int, where),
            n_heads=_get(raw, "n_head", 12, int, where),
            d_ff=d_ff,
            dropout=dropout,
            bias=True,
            positional="learned",
            activation=_ACTIVATIONS_FROM_HF[hf_activation],
            norm="layernorm",
            norm_eps=float(_get(raw, "layer_norm_epsilon", 1e-5, _NUMBER, where)),
            qk_norm=False,
            tie_embeddings=_get(raw, "tie_word_embeddings", True, bool, where),
        )
    except ValueError as e:
        raise GenloomError(f"{where}: invalid GPT-2 config: {e}") from None


def _read_weights(path: Path) -> dict[str, Tensor]:
    """The state dict in `path` (model.safetensors, else pytorch_model.bin), on the CPU."""
    safetensors_path, pytorch_path = path / SAFETENSORS_FILE, path / PYTORCH_FILE
    try:
        if safetensors_path.is_file():
            weights: Any = load_file(str(safetensors_path))
        elif pytorch_path.is_file():
            # weights_only: a .bin is a pickle; never run code from a downloaded file.
            weights = torch.load(pytorch_path, map_location="cpu", weights_only=True)
        else:
            raise GenloomError(
                f"{path} has no {SAFETENSORS_FILE} or {PYTORCH_FILE} (sharded checkpoints are not supported)"
            )
    except GenloomError:
        raise
    except Exception as e:  # both readers raise assorted bare errors for truncated or foreign files
        file = safetensors_path if safetensors_path.is_file() else pytorch_path
        raise GenloomError(f"cannot read {file}: {first_line(e)}") from None
    if not isinstance(weights, dict) or not all(isinstance(v, Tensor) for v in weights.values()):
        raise GenloomError(f"{path}: the weight file does not hold a state dict of tensors")
    return weights


def _convert_weights(hf: dict[str, Tensor], config: GPTConfig, path: Path) -> dict[str, Tensor]:
    """HF GPT-2 state dict -> GPT state dict.

    Keys carry `transformer.` when saved from GPT2LMHeadModel and not when saved from GPT2Model.
    """
    stripped: dict[str, Tensor] = {}
    for key, value in hf.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        stripped[key.removeprefix("transformer.")] = value
    names = _name_map(config.n_layers)
    ours: dict[str, Tensor] = {}
    for hf_name, our_name in names.items():
        if hf_name not in stripped:
            raise GenloomError(f"{path}: weight {hf_name!r} is missing; the weights do not match config.json")
        ours[our_name] = stripped[hf_name]
    head = stripped.get("lm_head.weight")
    if config.tie_embeddings:
        # Tied: the head is the embedding; a saved copy of it (if any) is redundant.
        ours["lm_head.weight"] = ours["token_embedding.weight"]
    elif head is None:
        raise GenloomError(f"{path}: tie_word_embeddings is false but lm_head.weight is missing")
    else:
        ours["lm_head.weight"] = head
    unexpected = sorted(set(stripped) - set(names) - {"lm_head.weight"})
    if unexpected:
        raise GenloomError(
            f"{path}: unexpected weights {unexpected[:3]}; the weights do not match config.json"
        )
    return ours


def is_hf_directory(path: Path) -> bool:
    """Whether `path` holds a Hugging Face model (its config.json names a `model_type`), not a genloom checkpoint."""
    return (path / CONFIG_FILE).is_file() and "model_type" in read_json(path / CONFIG_FILE)


def load_hf_gpt2(path: Path) -> tuple[GPT, Tokenizer]:
    """Load a local Hugging Face GPT-2 directory (config.json, weights, tokenizer) as a GPT in eval mode."""
    config = config_from_hf(read_json(path / CONFIG_FILE), path / CONFIG_FILE)
    # Checked before the (possibly large) weights are read: without a tokenizer the model is unusable.
    tokenizer = load_tokenizer(path)  # BPE files, or the char vocabulary of an exported genloom model
    # Not `exact`: Hugging Face models may pad the vocabulary (generation never samples the padding rows).
    check_tokenizer_fits(tokenizer, config.vocab_size, str(path), exact=False)
    weights = _convert_weights(_read_weights(path), config, path)
    model = GPT(config)
    # Every parameter must be set (with its shape), or the model would silently keep its random init.
    load_state(model, weights, f"{path}: the weights")
    return model.eval(), tokenizer


def config_to_hf(config: GPTConfig, eos_id: int | None) -> dict[str, Any]:
    """The GPT2Config dict for `config`; GenloomError naming the first feature GPT-2 cannot express."""
    if config.positional != "learned":
        raise GenloomError(f"GPT-2 cannot express {config.positional} positions (it learns a position table)")
    if config.norm != "layernorm":
        raise GenloomError(f"GPT-2 cannot express {config.norm} (it uses LayerNorm)")
    if config.activation not in _ACTIVATIONS_TO_HF:
        raise GenloomError(f"GPT-2 cannot express the {config.activation} activation")
    if config.qk_norm:
        raise GenloomError("GPT-2 cannot express QK-norm")
    if not config.bias:
        raise GenloomError("GPT-2 cannot express bias=False (its Linear layers and LayerNorms have biases)")
    hf: dict[str, Any] = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_ctx": config.context_length,  # legacy alias some tools still read
        "n_embd": config.d_model,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": config.hidden_dim,
        "activation_function": _ACTIVATIONS_TO_HF[config.activation],
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
        "tie_word_embeddings": config.tie_embeddings,
    }
    if eos_id is not None:
        # GPT-2 uses <|endoftext|> both to start and to end a document.
        hf["bos_token_id"] = eos_id
        hf["eos_token_id"] = eos_id
    else:
        # Otherwise transformers would assume GPT-2's 50256, which may not even be in this vocabulary.
        hf["bos_token_id"] = None
        hf["eos_token_id"] = None
    return hf


def _hf_weights(model: GPT) -> dict[str, Tensor]:
    """GPT state dict -> HF GPT2LMHeadModel names."""
    state = model.state_dict()
    out: dict[str, Tensor] = {}
    for hf_name, our_name in _name_map(model.config.n_layers).items():
        # safetensors needs contiguous tensors that share no storage.
        out[f"transformer.{hf_name}"] = state[our_name].detach().cpu().contiguous()
    if not model.config.tie_embeddings:
        # Tied: transformers re-ties lm_head to wte on load, so writing it twice would be redundant.
        out["lm_head.weight"] = state["lm_head.weight"].detach().cpu().contiguous()
    return out


def export_hf_gpt2(model: GPT, tokenizer: Tokenizer, out_dir: Path) -> None:
    """Write `model` as a directory `transformers.GPT2LMHeadModel.from_pretrained` loads, atomically."""
    hf_config = config_to_hf(model.config, tokenizer.eos_id)  # refuse before writing anything
    weights = _hf_weights(model)
    # The dtype transformers' default dtype="auto" loads the weights as.
    hf_config["dtype"] = str(next(iter(weights.values())).dtype).removeprefix("torch.")

    def write(tmp: Path) -> None:
        # transformers refuses safetensors files whose metadata does not name a known format.
        save_file(weights, str(tmp / SAFETENSORS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
        tokenizer.save(tmp)

    # The export replaces out_dir wholesale: only an earlier export may be there (or nothing).
    atomic_directory(out_dir, write, is_hf_directory, "an earlier Hugging Face export", "the export")
