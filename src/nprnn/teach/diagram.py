"""Pictures for ``nprnn explain --plot`` and ``nprnn plot-states`` (matplotlib, optional).

The unrolled network is a grid of cells, layers (bottom to top) by time steps (left to
right), one row per direction.  ``output`` is the band over the top layer; each layer's
final state (``h_n``, and ``c_n`` for LSTM) is outlined where its direction ends; the
cells that are in both ``output`` and ``h_n`` are filled red, as in the seed's figure.
Long sequences and deep stacks are elided with an ellipsis column or row.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:
    from ..nn.recurrent import RNNBase

MAX_STEPS, MAX_LAYERS = 8, 4


def _plt() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'nprnn[plot]'") from exc
    return plt


def _shown(n: int, limit: int, head: int) -> list[Optional[int]]:
    """Indices to draw (None marks the ellipsis)."""
    if n <= limit:
        return list(range(n))
    tail = limit - head - 1
    return list(range(head)) + [None] + list(range(n - tail, n))


def unrolled(module: "RNNBase", seq_len: int, path: str) -> None:
    """Draw ``module`` unrolled over ``seq_len`` steps to ``path`` (.png or .svg)."""
    plt = _plt()
    from matplotlib.patches import FancyBboxPatch, Rectangle

    kind = type(module).__name__
    D, L = module.num_directions, module.num_layers
    steps = _shown(seq_len, MAX_STEPS, 4)
    layers = _shown(L, MAX_LAYERS, 2)
    rows: list[tuple[Optional[int], int]] = []  # (layer or None, direction)
    for layer in layers:
        rows += [(layer, d) for d in range(D)] if layer is not None else [(None, 0)]
    cw, ch, gap_x, gap_y = 1.5, 0.62, 0.55, 0.5
    width = len(steps) * (cw + gap_x) + 2.6
    y_of = {}
    y = 1.4
    for r in rows:
        y_of[r] = y
        y += ch + gap_y
    top_y = y
    fig, ax = plt.subplots(figsize=(max(6.0, width * 0.95), max(3.5, (top_y + 1.6) * 0.95)), dpi=110)
    x_of = {t: 1.6 + i * (cw + gap_x) for i, t in enumerate(steps)}
    last_layer = L - 1

    def final_step(d: int) -> int:
        return 0 if d == 1 else seq_len - 1

    # input boxes
    for t, x in x_of.items():
        if t is None:
            ax.text(x + cw / 2, 0.55, "...", ha="center", va="center", fontsize=12)
            continue
        ax.add_patch(Rectangle((x + 0.2, 0.3), cw - 0.4, 0.5, fc="#eeeeee", ec="0.5"))
        ax.text(x + cw / 2, 0.55, f"x[{t}]", ha="center", va="center", fontsize=9)
    # output band over the top layer
    top_rows = [r for r in rows if r[0] == last_layer]
    if top_rows:
        y0 = min(y_of[r] for r in top_rows) - 0.12
        y1 = max(y_of[r] for r in top_rows) + ch + 0.12
        ax.add_patch(Rectangle((x_of[steps[0]] - 0.15, y0), x_of[steps[-1]] + cw + 0.3 - x_of[steps[0]], y1 - y0,
                               fc="#dbe9f7", ec="#4a7fb5", lw=1.2, zorder=0))
        ax.text(x_of[steps[-1]] + cw + 0.25, (y0 + y1) / 2, "output", color="#2d5f91", fontsize=10, va="center")
    for r in rows:
        layer, d = r
        yy = y_of[r]
        if layer is None:
            ax.text(x_of[steps[0]] + 0.3, yy + ch / 2, "...  (layers elided)  ...", fontsize=10, va="center")
            continue
        label = f"layer {layer}" + (" rev" if d else (" fwd" if D == 2 else ""))
        ax.text(0.15, yy + ch / 2, label, fontsize=9, va="center")
        for t in steps:
            x = x_of[t]
            if t is None:
                ax.text(x + cw / 2, yy + ch / 2, "...", ha="center", va="center", fontsize=12)
                continue
            is_final = t == final_step(d)
            shared = is_final and layer == last_layer
            fc = "#e05555" if shared else "white"
            ax.add_patch(FancyBboxPatch((x, yy), cw, ch, boxstyle="round,pad=0.02,rounding_size=0.08",
                                        fc=fc, ec="#c62828" if is_final else "0.35", lw=2.2 if is_final else 1.0,
                                        zorder=2))
            ax.text(x + cw / 2, yy + ch / 2, f"{kind.lower()} t={t}", ha="center", va="center", fontsize=8,
                    color="white" if shared else "black", zorder=3)
            if is_final:
                idx = layer * D + d
                tag = f"h_n[{idx}]" + (f", c_n[{idx}]" if module.kind.has_cell else "")
                ax.text(x + cw / 2, yy + ch + 0.05, tag, ha="center", va="bottom", fontsize=7, color="#c62828",
                        zorder=3)
        # recurrence arrows
        for a, b in zip(steps[:-1], steps[1:]):
            xa, xb = x_of[a] + cw, x_of[b]
            start, end = ((xa, xb) if d == 0 else (xb, xa))
            ax.annotate("", xy=(end, yy + ch / 2), xytext=(start, yy + ch / 2),
                        arrowprops=dict(arrowstyle="->", color="0.3", lw=1.1), zorder=1)
        h0_x = x_of[steps[0]] - 0.5 if d == 0 else x_of[steps[-1]] + cw + 0.05
        ax.text(h0_x, yy + ch / 2, "h0", fontsize=7, color="0.4", va="center")
    # stacking arrows (inputs into layer 0, layer k into k+1)
    drawn = [r for r in rows if r[0] is not None]
    for t in steps:
        if t is None:
            continue
        x = x_of[t] + cw / 2
        prev_y: float | None = 0.8
        for layer in layers:
            if layer is None:
                prev_y = None
                continue
            ys = [y_of[r] for r in drawn if r[0] == layer]
            if prev_y is not None:
                arrow = dict(arrowstyle="->", color="#777777", lw=0.9)
                ax.annotate("", xy=(x, min(ys)), xytext=(x, prev_y), arrowprops=arrow)
            prev_y = max(ys) + ch
    ax.set_xlim(0, width)
    ax.set_ylim(0, top_y + 0.9)
    ax.axis("off")
    note = ("\nboth directions of a layer read the layer below (or x); their states are concatenated"
            if D == 2 else "")
    ax.set_title(f"{module!r} unrolled over {seq_len} steps\n"
                 "blue band: output (top layer, every step); red outline: h_n"
                 + (" and c_n" if module.kind.has_cell else "") + " (each layer's final state); red fill: in both"
                 + note,
                 fontsize=9)
    _save(fig, path)


def _save(fig: Any, path: str) -> None:
    """``fig`` as an image at ``path``, written as every nprnn file is (atomically; only a
    regular file replaced: :func:`..interop.serialization.atomic_write`)."""
    import io

    from ..interop.serialization import atomic_write

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=os.path.splitext(os.fspath(path))[1][1:].lower() or "png")
    atomic_write(path, buf.getvalue())
    import matplotlib.pyplot as plt

    plt.close(fig)


def state_heatmaps(states: dict[tuple[int, int], dict[str, np.ndarray]], path: str, title: str = "") -> None:
    """Heatmaps from :func:`nprnn.explain.collect_states` (batch element 0): one row per
    layer and direction, one column per quantity (h, c, gates), time on the x axis."""
    plt = _plt()
    keys = sorted(states)
    cols = list(states[keys[0]])
    fig, axes = plt.subplots(len(keys), len(cols), figsize=(2.6 * len(cols) + 1, 2.2 * len(keys) + 0.8),
                             squeeze=False, dpi=100)
    for i, key in enumerate(keys):
        for j, name in enumerate(cols):
            a = np.asarray(states[key][name])[:, 0, :].T  # (H, time)
            gate = name not in ("h", "c")
            vmin, vmax = (0.0, 1.0) if gate and name in "ifozr" else (-1.0, 1.0) if name != "c" else (None, None)
            im = axes[i, j].imshow(a, aspect="auto", cmap="viridis" if gate else "RdBu_r", vmin=vmin, vmax=vmax,
                                   interpolation="nearest")
            axes[i, j].set_title(f"layer {key[0]}{' rev' if key[1] else ''}: {name}", fontsize=9)
            axes[i, j].set_xlabel("time step", fontsize=8)
            axes[i, j].set_ylabel("unit", fontsize=8)
            fig.colorbar(im, ax=axes[i, j], fraction=0.046)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)
