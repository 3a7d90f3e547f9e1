"""`genloom plot RUN_DIR`: train/val loss and learning-rate curves from metrics.jsonl, to a PNG."""

from __future__ import annotations

from pathlib import Path

from genloom.errors import GenloomError
from genloom.train.metrics import METRICS_FILE, read_metrics


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    records = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    lrs = [(r["step"], r["lr"]) for r in records if "lr" in r]
    if not train and not val:
        raise GenloomError(f"{run_dir} has no {METRICS_FILE} with losses to plot")

    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 1))
    if train:
        ax_loss.plot(*zip(*train, strict=True), label="train loss")
    if val:
        ax_loss.plot(*zip(*val, strict=True), "o-", label="val loss")
    ax_loss.set_ylabel("cross-entropy (nats/token)")
    ax_loss.set_title(f"genloom run: {run_dir.name}")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    if lrs:
        ax_lr.plot(*zip(*lrs, strict=True), color="tab:green")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    out = out or run_dir / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
