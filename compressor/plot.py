"""The search's candidates as a picture: size and decode latency against KL to the teacher.

matplotlib (Agg, no display) writes a PNG beside report.md, which embeds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

STYLE = {
    "ranked": {"color": "#7f7f7f", "marker": "o"},
    "finalist": {"color": "#1f77b4", "marker": "s"},
    "chosen": {"color": "#d62728", "marker": "*"},
}


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The Pareto front (lower x and lower y are better), sorted by x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def candidates_png(
    candidates: list[dict[str, Any]], limits: dict[str, float | None], path: Path, title: str
) -> bool:
    """Write the plot; False when no candidate has a KL to plot (nothing ranked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = [c for c in candidates if c.get("proxy_kl") is not None]
    if not ranked:
        return False
    axes_spec = [
        ("size_mib", "file_mib", "size (MiB)", "max_size_mib"),
        ("decode_ms", "decode_ms", "decode (ms/token, device)", "max_decode_ms_per_token"),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    for ax, (proj_key, meas_key, label, limit_key) in zip(axes, axes_spec, strict=True):
        pts = []
        for c in ranked:
            x = c["projected"].get(proj_key)
            if x is None:
                continue
            kl = max(c["proxy_kl"], 1e-6)
            st = STYLE.get(c["status"], STYLE["ranked"])
            ax.scatter([x], [kl], facecolors="none", edgecolors=st["color"], marker=st["marker"], s=60)
            pts.append((x, kl))
            m = c.get("measured") or {}
            if m.get(meas_key) is not None and m.get("kl") is not None:
                ax.scatter(
                    [m[meas_key]],
                    [max(m["kl"], 1e-6)],
                    color=st["color"],
                    marker=st["marker"],
                    s=110 if c["status"] == "chosen" else 60,
                    zorder=3,
                )
                ax.annotate(
                    c["candidate"],
                    (m[meas_key], max(m["kl"], 1e-6)),
                    fontsize=7,
                    xytext=(4, 4),
                    textcoords="offset points",
                )
        front = _front(pts)
        if len(front) > 1:
            ax.plot(
                [p[0] for p in front],
                [p[1] for p in front],
                color="#bbbbbb",
                lw=1,
                zorder=0,
                label="Pareto front (proxy)",
            )
        limit = limits.get(limit_key)
        xs = [p[0] for p in pts]
        if limit and xs and limit < 3 * max(xs):  # a far-off budget line would squash the points
            ax.axvline(limit, color="#d62728", ls="--", lw=1, label="budget")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("KL to the teacher (per token)")
        ax.grid(alpha=0.3)
    axes[0].scatter([], [], facecolors="none", edgecolors="#7f7f7f", label="proxy KL (torch, calibration)")
    axes[0].scatter([], [], color="#1f77b4", marker="s", label="measured (file in its runtime)")
    axes[0].scatter([], [], color="#d62728", marker="*", label="chosen")
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
