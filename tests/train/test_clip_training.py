"""The reranker's training task: hard negatives, the masked contrastive loss, and that it learns."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genloom.data.captions import CaptionCodec, train_caption_tokenizer
from genloom.models.clip import Clip, ClipConfig
from genloom.tokenizers import BPETokenizer, SpecialIds
from genloom.train.clip import ClipTask, contrastive_loss, replace_one_word, swap_two_words, word_mask
from genloom.train.config import TrainConfig
from genloom.train.trainer import Trainer

IDS = SpecialIds(pad=1, bos=2, eos=3)
TEXT = torch.tensor([
    [2, 10, 11, 12, 3, 1],
    [2, 20, 21, 3, 1, 1],
    [2, 30, 3, 1, 1, 1],  # one word: nothing to swap
])


def test_word_mask_leaves_out_special_tokens() -> None:
    assert word_mask(TEXT, IDS).sum(1).tolist() == [3, 2, 1]


def test_swap_two_words_swaps_two_words_of_each_caption() -> None:
    words = word_mask(TEXT, IDS)
    for seed in range(20):
        out = swap_two_words(TEXT, words, torch.Generator().manual_seed(seed))
        for row, new, keep in zip(TEXT, out, words, strict=True):
            changed = (row != new).nonzero().flatten().tolist()
            if int(keep.sum()) < 2:
                assert changed == []
            else:
                assert len(changed) == 2 and all(bool(keep[i]) for i in changed)
                assert sorted(row.tolist()) == sorted(new.tolist())  # a permutation: the same words


def test_replace_one_word_takes_another_captions_word_at_the_same_position() -> None:
    words = word_mask(TEXT, IDS)
    seen_changes = 0
    for seed in range(30):
        out = replace_one_word(TEXT, words, torch.Generator().manual_seed(seed))
        for row, new in zip(TEXT, out, strict=True):
            changed = (row != new).nonzero().flatten().tolist()
            assert len(changed) <= 1
            for i in changed:
                seen_changes += 1
                assert bool(words[:, i].any()) and int(new[i]) in TEXT[:, i].tolist()  # a donor's word there
                assert int(new[i]) not in (IDS.pad, IDS.bos, IDS.eos)
    assert seen_changes > 0


def test_contrastive_loss_masks_copies_of_the_right_caption() -> None:
    torch.manual_seed(0)
    text = torch.tensor([[2, 10, 3], [2, 11, 3], [2, 12, 3]])
    logits = torch.randn(3, 3)
    plain = contrastive_loss(logits, text, text)
    expected = (F.cross_entropy(logits, torch.arange(3)) + F.cross_entropy(logits.T, torch.arange(3))) / 2
    torch.testing.assert_close(plain, expected)
    # A hard negative that came out equal to caption 1, scored very high by image 1: masked for image 1, so
    # (with images 0 and 2 scoring it far below everything) nothing changes.
    candidates = torch.cat([text, text[1:2]])
    column = torch.tensor([[-1e4], [50.0], [-1e4]])
    with_copy = contrastive_loss(torch.cat([logits, column], dim=1), text, candidates)
    torch.testing.assert_close(with_copy, plain)


def _task(batch_size: int = 8) -> tuple[ClipTask, ClipConfig]:
    # Six captions, each always shown with its own image: a constant grid of one code.
    captions = [f"a {c} {s}" for c in ("red", "blue") for s in ("circle", "square", "triangle")]
    tokenizer: BPETokenizer = train_caption_tokenizer(captions, 300)
    ids = SpecialIds.of(tokenizer)
    config = ClipConfig(text_vocab_size=tokenizer.vocab_size, text_len=8, pad_id=ids.pad, image_vocab_size=8,
                        grid_size=2, d_model=32, n_layers=1, n_heads=2, d_ff=64, embed_dim=16)
    text = CaptionCodec(tokenizer, config.text_len).encode(captions * 4)
    codes = torch.arange(6).repeat(4)[:, None].expand(-1, 4)  # (24, 4)
    return ClipTask(config, tokenizer, text, codes, text[:6], codes[:6], batch_size), config


def test_task_batches_carry_hard_negatives_and_are_reproducible() -> None:
    task, config = _task()
    a = task.micro_batches(torch.Generator().manual_seed(3), 0, 1, 2)
    b = task.micro_batches(torch.Generator().manual_seed(3), 0, 1, 2)
    assert len(a) == 2 and all(len(x) == 4 for x in a)
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            assert torch.equal(u, v)
    text, codes, swapped, replaced = a[0]
    assert text.shape == swapped.shape == replaced.shape == (8, config.text_len) and codes.shape == (8, 4)
    # Two processes split the same draws: process 1's first micro-batch is process 0's third.
    both = task.micro_batches(torch.Generator().manual_seed(3), 0, 1, 4)
    assert torch.equal(task.micro_batches(torch.Generator().manual_seed(3), 1, 2, 2)[0][0], both[2][0])


def test_clip_learns_to_match_captions_and_images(tmp_path: object) -> None:
    task, config = _task()
    torch.manual_seed(0)
    model = Clip(config)
    train = TrainConfig(out_dir=str(tmp_path), max_steps=150, batch_size=8, lr=3e-3, warmup_steps=5,
                        eval_interval=150, eval_batches=1, progress=False, best_metric="val_accuracy")
    result = Trainer(task, model, train).fit()
    assert result.val_loss is not None and result.val_loss < 0.5
    assert result.best["val_accuracy"] == 1.0
