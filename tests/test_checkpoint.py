"""The checkpoint format: atomic writes that fail as one line, permissions, leftovers of killed saves, loading."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import BinaryIO

import pytest
import torch

from genloom.checkpoint import (
    MODEL_FILE,
    STATE_FILE,
    is_genloom_checkpoint,
    load_weights,
    read_checkpoint_config,
    remove_stale_temporaries,
    save_checkpoint,
)
from genloom.errors import GenloomError
from genloom.models.gpt import GPT, GPTConfig
from genloom.tokenizers import CharTokenizer

CONFIG = GPTConfig(vocab_size=7, context_length=8, n_layers=1, d_model=16, n_heads=2)
TOKENIZER = CharTokenizer.train("abcdefg")


def test_a_save_beyond_the_file_size_limit_is_one_line_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    """`ulimit -f`: the second save (with a training state too large for the limit) fails with one line."""
    script = f"""
import resource, sys, torch
from pathlib import Path
from genloom.checkpoint import save_checkpoint
from genloom.errors import GenloomError
from genloom.models.gpt import GPT, GPTConfig
from genloom.tokenizers import CharTokenizer
config = GPTConfig(vocab_size=7, context_length=8, n_layers=1, d_model=16, n_heads=2)
target = Path({str(tmp_path / "ckpt")!r})
save_checkpoint(target, GPT(config), "gpt", config, CharTokenizer.train("abcdefg"), metadata={{"step": 1}})
resource.setrlimit(resource.RLIMIT_FSIZE, (120 * 1024, 120 * 1024))
try:
    save_checkpoint(target, GPT(config), "gpt", config, CharTokenizer.train("abcdefg"),
                    {{"big": torch.zeros(100_000)}}, {{"step": 2}})
except GenloomError as e:
    print(e)
    sys.exit(1)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stdout.strip().startswith(f"cannot write checkpoint {tmp_path / 'ckpt'}: File too large")
    assert read_checkpoint_config(tmp_path / "ckpt")["step"] == 1 and is_genloom_checkpoint(tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary copy left behind


class _InterruptedFile:
    """A file whose third write is hit by Ctrl-C or SIGTERM (their handlers raise KeyboardInterrupt there)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.writes = file, 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes == 3:
            raise KeyboardInterrupt
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def test_an_interrupt_mid_save_stays_an_interrupt_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch.save swallows an interrupt raised in its write callback and fails as "unexpected pos": a SIGTERM
    # landing there once came out as a write error and exit 1, not as a termination.
    save_checkpoint(tmp_path / "ckpt", GPT(CONFIG), "gpt", CONFIG, TOKENIZER, {"step": 1}, {"step": 1})
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, _InterruptedFile(f)))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ckpt", GPT(CONFIG), "gpt", CONFIG, TOKENIZER, {"step": 2}, {"step": 2})
    assert read_checkpoint_config(tmp_path / "ckpt")["step"] == 1 and is_genloom_checkpoint(tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary copy left behind


def test_a_sigterm_between_the_two_renames_waits_for_the_new_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Stopped(Exception):
        pass

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Stopped

    save_checkpoint(tmp_path / "best", GPT(CONFIG), "gpt", CONFIG, TOKENIZER, metadata={"step": 1})
    real_rename = Path.rename

    def rename(self: Path, target: Path) -> Path:
        if self.name.startswith(".best.tmp-"):  # the new copy's rename into place, after the old one moved aside
            os.kill(os.getpid(), signal.SIGTERM)
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stopped):
            save_checkpoint(tmp_path / "best", GPT(CONFIG), "gpt", CONFIG, TOKENIZER, metadata={"step": 2})
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert read_checkpoint_config(tmp_path / "best")["step"] == 2 and is_genloom_checkpoint(tmp_path / "best")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_a_new_copy_that_cannot_take_its_place_puts_the_earlier_one_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path / "best", GPT(CONFIG), "gpt", CONFIG, TOKENIZER, metadata={"step": 1})
    real_rename = Path.rename

    def rename(self: Path, target: Path) -> Path:
        if self.name.startswith(".best.tmp-"):
            raise OSError(5, "Input/output error")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="Input/output error"):  # the CLI prints it as one line
        save_checkpoint(tmp_path / "best", GPT(CONFIG), "gpt", CONFIG, TOKENIZER, metadata={"step": 2})
    assert read_checkpoint_config(tmp_path / "best")["step"] == 1 and is_genloom_checkpoint(tmp_path / "best")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_checkpoints_get_the_permissions_of_any_other_file(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "ckpt", GPT(CONFIG), "gpt", CONFIG, TOKENIZER, {"step": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o755  # not mkdtemp's 0700
    for name in (MODEL_FILE, STATE_FILE, "config.json", "char_tokenizer.json"):
        assert stat.S_IMODE((tmp_path / "ckpt" / name).stat().st_mode) == 0o644, name


def test_stale_temporaries_are_removed_and_an_orphaned_copy_put_back(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "checkpoint-0000002", GPT(CONFIG), "gpt", CONFIG, TOKENIZER)
    (tmp_path / "checkpoint-0000002").rename(tmp_path / ".checkpoint-0000002.old-k3j")  # killed between renames
    (tmp_path / ".best.tmp-a1").mkdir()
    (tmp_path / ".metrics.jsonl.tmp-zz").write_text("half")
    (tmp_path / ".hidden-notes").write_text("not ours: kept")
    save_checkpoint(tmp_path / "best", GPT(CONFIG), "gpt", CONFIG, TOKENIZER)
    (tmp_path / ".best.old-b2").mkdir()  # best/ exists: the old copy is garbage
    done = remove_stale_temporaries(tmp_path)
    assert sorted(done) == [".best.old-b2", ".best.tmp-a1", ".checkpoint-0000002.old-k3j", ".metrics.jsonl.tmp-zz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden-notes", "best", "checkpoint-0000002"]
    assert is_genloom_checkpoint(tmp_path / "checkpoint-0000002")


def test_saving_over_something_else_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(GenloomError, match="is not empty and is not a genloom checkpoint"):
        save_checkpoint(tmp_path / "mine", GPT(CONFIG), "gpt", CONFIG, TOKENIZER)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"


def test_weights_that_do_not_fit_are_one_line_naming_the_tensor(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", GPT(CONFIG), "gpt", CONFIG, TOKENIZER)
    wider = GPT(GPTConfig(vocab_size=7, context_length=8, n_layers=1, d_model=32, n_heads=2))
    with pytest.raises(GenloomError, match=r"lm_head.weight has shape \(7, 16\), the config makes it \(7, 32\)$"):
        load_weights(wider, tmp_path / "ckpt")
    deeper = GPT(GPTConfig(vocab_size=7, context_length=8, n_layers=2, d_model=16, n_heads=2))
    with pytest.raises(GenloomError, match=r"tensor 'transformer\.blocks\.1\.attn_norm\.weight' is missing"):
        load_weights(deeper, tmp_path / "ckpt")
    same = GPT(CONFIG)
    load_weights(same, tmp_path / "ckpt")  # a tied head is one tensor under two names: the file holds one
    assert same.lm_head.weight.data_ptr() == same.token_embedding.weight.data_ptr()
    assert not torch.equal(same.token_embedding.weight, GPT(CONFIG).token_embedding.weight)
