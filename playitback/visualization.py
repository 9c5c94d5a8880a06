"""Pictures of what PlayItBack replayed: the log-mel spectrogram with the replayed segments of each playback, the
saliency curve, and (for labelled demo data) the true event."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_PLAYBACK_COLOURS = ("tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink")


def plot_replay(
    spectrogram: np.ndarray,
    start_s: float,
    duration_s: float,
    segments: Sequence[Sequence[Sequence[float]]],
    saliency: np.ndarray | None = None,
    events: Sequence[Sequence[float]] = (),
    title: str = "",
    out_path: str | Path = "replay.png",
) -> Path:
    """Save one figure.

    Args:
        spectrogram: log-mel [T, F] of playback 0 over [start_s, start_s + duration_s).
        start_s, duration_s: where the crop lies in the audio file (seconds).
        segments: per replay (playback 1, 2, ...) the [start_s, end_s] segments it replayed, in file seconds.
        saliency: [S, T0] saliency curves in [0, 1] of each playback on the frame grid of playback 0 (optional).
        events: true event spans [start_s, end_s] in file seconds (optional, e.g. the demo data).
        title: figure title.
        out_path: PNG file to write.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rows = 2 if saliency is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(10, 3.2 * rows), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1][:rows]})
    end_s = start_s + duration_s
    ax = axes[0, 0]
    ax.imshow(spectrogram.T, origin="lower", aspect="auto", cmap="magma", extent=(start_s, end_s, 0, spectrogram.shape[1]))
    ax.set_ylabel("mel bin")
    band = spectrogram.shape[1] / (len(segments) + 1) / 3
    for replay_index, runs in enumerate(segments):
        colour = _PLAYBACK_COLOURS[replay_index % len(_PLAYBACK_COLOURS)]
        y = spectrogram.shape[1] - (replay_index + 1) * band * 1.2
        for run_index, (s, e) in enumerate(runs):
            ax.add_patch(plt.Rectangle((s, y), e - s, band, color=colour, alpha=0.85,
                                       label=f"replayed at playback {replay_index + 1}" if run_index == 0 else None))
    for event_index, (s, e) in enumerate(events):
        ax.axvspan(s, e, ymin=0, ymax=1, fill=False, edgecolor="cyan", linewidth=2, linestyle="--",
                   label="true event" if event_index == 0 else None)
    if any(len(r) for r in segments) or len(events):
        ax.legend(loc="lower right", fontsize=8, framealpha=0.8)
    ax.set_title(title)
    if saliency is not None:
        sal_ax = axes[1, 0]
        times = start_s + np.arange(saliency.shape[1]) * duration_s / saliency.shape[1]  # frame k centred at k hops
        for index, curve in enumerate(saliency):
            sal_ax.plot(times, curve, label=f"saliency of playback {index}", linewidth=1.2)
        for s, e in events:
            sal_ax.axvspan(s, e, color="cyan", alpha=0.2)
        sal_ax.set_ylim(-0.05, 1.05)
        sal_ax.set_ylabel("saliency")
        sal_ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("time in file (s)")
    axes[-1, 0].set_xlim(start_s, end_s)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
