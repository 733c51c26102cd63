"""The course's evaluation charts as PNG files: truth against prediction (hits green, near misses orange, misses
red) and the mean absolute error by price band, for the fine-tune and the base model."""

from pathlib import Path
from typing import Any

BANDS = [(0.0, 50.0), (50.0, 100.0), (100.0, 250.0), (250.0, 500.0), (500.0, float("inf"))]
COLORS = {"hit": "green", "near": "orange", "miss": "red"}
SCATTER_FILE, BANDS_FILE = "scatter.png", "error-by-band.png"


def band_label(low: float, high: float) -> str:
    """`$50-100`, `≥$500`."""
    return f"≥${low:.0f}" if high == float("inf") else f"${low:.0f}-{high:.0f}"


def mean_error_by_band(rows: list[dict[str, Any]], prediction: str = "prediction") -> list[float | None]:
    """The mean absolute error of the parsed predictions whose truth falls in each band (None when none does)."""
    out: list[float | None] = []
    for low, high in BANDS:
        errors = [
            abs(r[prediction] - r["truth"]) for r in rows if low <= r["truth"] < high and r[prediction] is not None
        ]
        out.append(sum(errors) / len(errors) if errors else None)
    return out


def draw_charts(rows: list[dict[str, Any]], out_dir: Path, *, baseline: bool, subject: str = "fine-tune") -> list[Path]:
    """Write the scatter and the band chart of `subject` (the fine-tune, or the base model alone); returns their
    paths."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a worker
    import matplotlib.pyplot as plt

    parsed = [r for r in rows if r["truth"] is not None and r["prediction"] is not None]
    figure, axes = plt.subplots(figsize=(7, 6))
    top = max([r["truth"] for r in rows if r["truth"] is not None] + [r["prediction"] for r in parsed] + [1.0])
    axes.plot([0, top], [0, top], color="deepskyblue", linewidth=1, label="truth = prediction")
    axes.scatter(
        [r["truth"] for r in parsed], [r["prediction"] for r in parsed], c=[COLORS[r["grade"]] for r in parsed], s=12
    )
    axes.set_xlabel("truth ($)")
    axes.set_ylabel("prediction ($)")
    unparsed = len(rows) - len(parsed)
    axes.set_title(f"{subject}: {len(parsed)} answers plotted, {unparsed} without a number")
    figure.tight_layout()
    scatter = out_dir / SCATTER_FILE
    figure.savefig(scatter, dpi=100)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(7, 4))
    labels = [band_label(low, high) for low, high in BANDS]
    width = 0.4 if baseline else 0.8
    positions = list(range(len(BANDS)))
    tuned = [v or 0.0 for v in mean_error_by_band(rows)]
    axes.bar([p - (width / 2 if baseline else 0) for p in positions], tuned, width, label=subject)
    if baseline:
        base = [v or 0.0 for v in mean_error_by_band(rows, "baseline_prediction")]
        axes.bar([p + width / 2 for p in positions], base, width, label="base model", color="grey")
    axes.set_xticks(positions, labels)
    axes.set_ylabel("mean absolute error ($)")
    axes.legend()
    figure.tight_layout()
    bands = out_dir / BANDS_FILE
    figure.savefig(bands, dpi=100)
    plt.close(figure)
    return [scatter, bands]
