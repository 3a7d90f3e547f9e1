"""`genloom plot RUN_DIR`: train/val loss, learning-rate and (language models) in-context-learning probe curves from
metrics.jsonl, to a PNG."""

from __future__ import annotations

from pathlib import Path

from genloom.errors import GenloomError
from genloom.train.metrics import METRICS_FILE, read_metrics

PROBES = ("induction_gain", "mapping_gain", "icl_score")  # plotted when the run logged them (language models do)


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    records = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    lrs = [(r["step"], r["lr"]) for r in records if "lr" in r]
    probes = {name: [(r["step"], r[name]) for r in records if name in r] for name in PROBES}
    probes = {name: points for name, points in probes.items() if points}
    if not train and not val:
        raise GenloomError(f"{run_dir} has no {METRICS_FILE} with losses to plot")

    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    rows = 3 if probes else 2
    fig, axes = plt.subplots(rows, 1, figsize=(8, 2 + 2 * rows), sharex=True, height_ratios=(3, 1, 2)[:rows])
    ax_loss, ax_lr = axes[0], axes[1]
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
    ax_lr.grid(alpha=0.3)
    if probes:  # the in-context-learning probes: induction heads forming show as a jump in the gain
        ax_probe = axes[2]
        for name, points in probes.items():
            ax_probe.plot(*zip(*points, strict=True), "o-", label=name.replace("_", " "))
        ax_probe.axhline(0.0, color="grey", linewidth=0.5)
        ax_probe.set_ylabel("nats/token")
        ax_probe.legend()
        ax_probe.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    out = out or run_dir / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
