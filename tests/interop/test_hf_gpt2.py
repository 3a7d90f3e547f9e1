"""Hugging Face GPT-2 interop: loading a transformers GPT-2 directory and exporting one, checked against
transformers itself (same logits, same greedy continuation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from genloom.errors import GenloomError  # noqa: E402
from genloom.interop.hf_gpt2 import export_hf_gpt2, load_hf_gpt2  # noqa: E402
from genloom.models.gpt import GPT, GPTConfig  # noqa: E402
from genloom.registry import load_pretrained  # noqa: E402
from genloom.tokenizers import BPETokenizer  # noqa: E402

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model predicts the next token from the tokens before it.",
    "Attention is all you need, said the paper, and the field agreed.",
    "Byte-level BPE can encode any string without an unknown token.",
] * 4
PROMPT = "The quick brown fox"
HFDir = tuple[GPT2LMHeadModel, Path]  # a transformers model and the directory it was saved to


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    return BPETokenizer.train(TEXTS, vocab_size=300)


def _hf_model(tokenizer: BPETokenizer, **overrides: object) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=tokenizer.vocab_size, **overrides
    )
    return GPT2LMHeadModel(config).eval()


def _save_hf(model: GPT2LMHeadModel, tokenizer: BPETokenizer, directory: Path) -> Path:
    model.save_pretrained(directory)
    tokenizer.save(directory)
    return directory


@pytest.fixture(scope="module")
def hf_dir(tokenizer: BPETokenizer, tmp_path_factory: pytest.TempPathFactory) -> HFDir:
    model = _hf_model(tokenizer)
    return model, _save_hf(model, tokenizer, tmp_path_factory.mktemp("hf"))


def _ids(tokenizer: BPETokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer.encode(TEXTS[1])])  # (1, T), within the 64-token context


def _assert_same_logits(ours: torch.nn.Module, hf: GPT2LMHeadModel, ids: torch.Tensor) -> None:
    with torch.no_grad():
        diff = (ours(ids) - hf(ids).logits).abs().max().item()
    assert diff < 1e-4


def _greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding with KV caches: the whole prompt once, then one token per step."""
    caches = model.make_kv_caches(1)
    out: list[int] = []
    with torch.no_grad():
        logits = model(torch.tensor([prompt]), kv_caches=caches, last_only=True)
        for _ in range(n):
            token = int(logits[0, -1].argmax())
            out.append(token)
            logits = model(torch.tensor([[token]]), kv_caches=caches, last_only=True)
    return out


def test_load_matches_transformers_logits(hf_dir: HFDir, tokenizer: BPETokenizer) -> None:
    hf, directory = hf_dir
    model, loaded_tokenizer = load_hf_gpt2(directory)
    assert isinstance(model, GPT) and not model.training and model.config.tie_embeddings
    assert loaded_tokenizer.encode(PROMPT) == tokenizer.encode(PROMPT)
    _assert_same_logits(model, hf, _ids(tokenizer))
    assert load_pretrained(directory).family == "gpt"  # the registry takes HF directories wherever it loads


def test_greedy_continuation_matches_transformers_generate(
    hf_dir: HFDir, tokenizer: BPETokenizer
) -> None:
    hf, directory = hf_dir
    model = load_hf_gpt2(directory)[0]
    assert isinstance(model, GPT)
    prompt = tokenizer.encode(PROMPT)
    with torch.no_grad():
        expected = hf.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=20, do_sample=False, pad_token_id=0,
        )[0, len(prompt):].tolist()
    assert len(expected) == 20
    assert _greedy(model, prompt, 20) == expected


def test_load_pytorch_model_bin_without_prefix_and_relu(tokenizer: BPETokenizer, tmp_path: Path) -> None:
    # transformers 5 only writes safetensors, so write the legacy pickle format as older versions did.
    hf = _hf_model(tokenizer, activation_function="relu")
    hf.config.save_pretrained(tmp_path)
    tokenizer.save(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    _assert_same_logits(load_hf_gpt2(tmp_path)[0], hf, _ids(tokenizer))
    # GPT2Model checkpoints (like the original openai-community/gpt2) have no `transformer.` prefix and no
    # lm_head, and may carry causal-mask buffers; all of that is accepted.
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    state["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)
    torch.save(state, tmp_path / "pytorch_model.bin")
    _assert_same_logits(load_hf_gpt2(tmp_path)[0], hf, _ids(tokenizer))


def test_export_round_trip_tied(tokenizer: BPETokenizer, tmp_path: Path) -> None:
    torch.manual_seed(1)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=64, n_layers=2, d_model=64, n_heads=4)
    model = GPT(config).eval()
    out = tmp_path / "export"
    export_hf_gpt2(model, tokenizer, out)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["eos_token_id"] == tokenizer.eos_id
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    _assert_same_logits(model, hf, _ids(tokenizer))
    # And back again: the exported directory loads as genloom too.
    _assert_same_logits(load_hf_gpt2(out)[0], hf, _ids(tokenizer))


def test_export_round_trip_untied(tokenizer: BPETokenizer, tmp_path: Path) -> None:
    torch.manual_seed(2)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=64, n_layers=2, d_model=64, n_heads=4, d_ff=96,
        activation="gelu", tie_embeddings=False,
    )
    model = GPT(config).eval()
    out = tmp_path / "export"
    export_hf_gpt2(model, tokenizer, out)
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    assert not hf.config.tie_word_embeddings
    assert not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight)
    _assert_same_logits(model, hf, _ids(tokenizer))


def test_export_refuses_rotary(tokenizer: BPETokenizer, tmp_path: Path) -> None:
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, context_length=16, n_layers=1, d_model=32, n_heads=2,
        positional="rotary",
    )
    model = GPT(config)
    with pytest.raises(GenloomError, match="rotary"):
        export_hf_gpt2(model, tokenizer, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_load_refuses_other_model_types(hf_dir: HFDir, tmp_path: Path) -> None:
    _, directory = hf_dir
    for file in directory.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    config = json.loads((directory / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(GenloomError, match="llama"):
        load_hf_gpt2(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "scale_attn_by_inverse_layer_idx": True}))
    with pytest.raises(GenloomError, match="scale_attn_by_inverse_layer_idx"):
        load_hf_gpt2(tmp_path)


def test_load_reports_missing_tokenizer_and_corrupt_weights(
    hf_dir: HFDir, tmp_path: Path
) -> None:
    _, directory = hf_dir
    (tmp_path / "config.json").write_bytes((directory / "config.json").read_bytes())
    (tmp_path / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(GenloomError, match="no tokenizer"):
        load_hf_gpt2(tmp_path)
    (tmp_path / "tokenizer.json").write_bytes((directory / "tokenizer.json").read_bytes())
    with pytest.raises(GenloomError, match="cannot read"):
        load_hf_gpt2(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(GenloomError, match=r"model\.safetensors"):
        load_hf_gpt2(tmp_path)


def test_load_pretrained_dispatches_to_hf(hf_dir: HFDir, tokenizer: BPETokenizer) -> None:
    hf, directory = hf_dir
    loaded = load_pretrained(directory)
    assert loaded.family == "gpt" and loaded.path == directory
    _assert_same_logits(loaded.model, hf, _ids(tokenizer))
