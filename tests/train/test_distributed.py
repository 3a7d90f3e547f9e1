"""torchrun with 2 CPU processes (gloo) trains exactly as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TEXT = "".join(f"Sentence {i}: distributed training splits {i % 9} batches across ranks.\n" for i in range(300))


def _train(tmp_path: Path, name: str, processes: int, batch_size: int) -> tuple[Path, str]:
    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    out = tmp_path / name
    args = [
        "train", "lm", "--data", str(data), "--preset", "tiny", "--n-layers", "1", "--d-model", "32",
        "--n-heads", "2", "--context-length", "16", "--steps", "6", "--eval-interval", "3", "--eval-batches", "4",
        "--warmup", "2", "--batch-size", str(batch_size), "--device", "cpu", "--no-progress", "--out", str(out),
    ]
    launcher = [sys.executable, "-m", "genloom.cli"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                    "-m", "genloom.cli"]
    env = {**os.environ, "GENLOOM_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, proc.stdout


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    single, _ = _train(tmp_path, "single", processes=1, batch_size=8)
    ddp, printed = _train(tmp_path, "ddp", processes=2, batch_size=4)
    # Each validation and the summary are printed once, by rank 0, not once per process.
    assert printed.count("step 3: val") == 1 and printed.count("step 6: val") == 1
    assert printed.count("done: step 6") == 1

    def val_losses(run: Path) -> list[float]:
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["val_loss"] for r in records if "val_loss" in r]

    assert len(val_losses(ddp)) == 2
    assert val_losses(ddp) == pytest.approx(val_losses(single), abs=1e-5)
    a = load_file(single / "checkpoint-0000006" / "model.safetensors")
    b = load_file(ddp / "checkpoint-0000006" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)
