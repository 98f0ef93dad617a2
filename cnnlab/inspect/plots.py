"""Pictures of what the inspection functions return: one function per picture, each taking
arrays (never a model) and returning a :class:`matplotlib.figure.Figure`; :func:`save`
writes one to a PNG file, :func:`png_bytes` gives the PNG itself.

Needs matplotlib (``pip install 'cnnlab[plots]'``), imported only when this module is.
Figures are created directly on the Agg canvas, never through ``pyplot``: no global
figure list, no backend switch, nothing shared between calls (close nothing, keep
nothing). Images go in as (C, H, W) or (N, C, H, W) in display space: uint8 pixels, or
floats in [0, 1] (a dataset's ``images``, or a normalised image mapped back with
``x * std + mean``). Small images are drawn with nearest-neighbour interpolation, so an
8x8 digit shows its 64 pixels rather than a blur.

==========================  ==========================================================
:func:`filters`             first-layer filters, grayscale or RGB
:func:`filters_per_channel` a deeper Conv2d: one tile per (filter, input channel)
:func:`filter_gradients`    d loss / d weight of a Conv2d, on a shared signed scale
:func:`feature_maps`        several layers' feature maps for one image
:func:`attribution`         occlusion / saliency / SmoothGrad / Grad-CAM over the image
:func:`synthesized`         activation-maximisation images (per class or per channel)
:func:`top_activations`     top-k images per channel with receptive-field boxes, and patches
:func:`embedding`           t-SNE or PCA scatter coloured by class
:func:`neighbors`           nearest neighbours in feature space beside pixel space
:func:`confusion`           confusion matrix, counts and row-normalised
:func:`curves`              loss, accuracy and learning rate per epoch
==========================  ==========================================================
"""
from __future__ import annotations

import io
import math
import os

import numpy as np

try:
    from matplotlib import colors as mcolors
    from matplotlib import patheffects
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("cnnlab.inspect.plots needs matplotlib; install it with pip install 'cnnlab[plots]' "
                      f"({e})") from None

from .._io import atomic_write_bytes

__all__ = ["filters", "filters_per_channel", "filter_gradients", "feature_maps", "attribution", "synthesized",
           "top_activations", "embedding", "neighbors", "confusion", "curves", "save", "png_bytes"]

DPI = 100
_RIGHT, _WRONG = "#1a7f37", "#cf222e"   # green and red that stay readable on white
_OUTLINE = [patheffects.withStroke(linewidth=2.5, foreground="white")]


# ----- plumbing -----

def _figure(width: float, height: float) -> Figure:
    """A new Figure on its own Agg canvas, with constrained layout (no overlapping labels)."""
    fig = Figure(figsize=(max(width, 2.0), max(height, 1.5)), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path, dpi: int = DPI) -> str:
    """Write ``fig`` to ``path`` as a PNG, atomically (the file appears complete or not at
    all); returns the path."""
    atomic_write_bytes(path, png_bytes(fig, dpi))
    return os.fspath(path)


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """The PNG file of ``fig``, as bytes (for embedding in a page)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def _display(image, where: str) -> np.ndarray:
    """(C, H, W) with C in (1, 3), uint8 or [0, 1] floats -> what imshow takes: (H, W) or
    (H, W, 3) floats in [0, 1]. A 2-D array is taken as one grayscale channel."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[0] not in (1, 3):
        raise ValueError(f"{where}: expected an image (C, H, W) with 1 or 3 channels, got shape {a.shape}")
    a = a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
    a = np.clip(a, 0.0, 1.0)
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def _show(ax, image, where: str, title: str = None, **title_kw):
    ax.imshow(_display(image, where), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    _bare(ax)
    if title:
        ax.set_title(title, **title_kw)


def _bare(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def _names(classes, n: int) -> list:
    return [str(c) for c in classes] if classes is not None else [str(k) for k in range(n)]


def _columns(n: int, widest: int = 10) -> int:
    """Columns for a grid of n small panels: a little wider than tall, at most ``widest``."""
    return max(1, min(n, widest, math.ceil(math.sqrt(n * 1.6))))


def _tiles(rows: list, pad: int = 1) -> np.ndarray:
    """Rows of equally sized 2-D tiles into one array, NaN between them (drawn blank)."""
    h, w = rows[0][0].shape
    ncols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) - pad, ncols * (w + pad) - pad), np.nan)
    for i, row in enumerate(rows):
        for j, t in enumerate(row):
            out[i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = t
    return out


def _diverging(name: str = "RdBu_r"):
    """A diverging colour map whose NaN cells (padding between tiles) are white."""
    from matplotlib import colormaps
    return colormaps[name].with_extremes(bad="white")


# ----- weights -----

def filters(weights, title: str = "First-layer filters") -> Figure:
    """The filters (F, C, KH, KW) of a convolution whose input is the image (C = 1 or 3),
    one panel each. Each filter is scaled on its own so that zero is mid-grey: grayscale
    filters go from black (most negative weight) to white (most positive); colour filters
    show each channel's weight as that colour's intensity, so opposing colours appear."""
    where = "plots.filters"
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 4 or w.shape[1] not in (1, 3):
        raise ValueError(f"{where}: expected weights (F, C, KH, KW) with C 1 or 3, got shape {w.shape}; "
                         f"use filters_per_channel for deeper layers")
    n, c, kh, kw = w.shape
    peak = np.abs(w).max(axis=(1, 2, 3), keepdims=True)
    shown = 0.5 + 0.5 * w / np.where(peak > 0, peak, 1)
    ncols = _columns(n, 12)
    nrows = -(-n // ncols)
    fig = _figure(max(1.0 * ncols + 0.4, 5.6), 1.05 * nrows + 1.1)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k < n:
            _show(ax, shown[k], where, f"#{k}", fontsize=9)
        else:
            ax.axis("off")
    scale = ("black: negative, mid-grey: 0, white: positive" if c == 1 else
             "mid-grey: 0; a colour: that channel's weight")
    fig.suptitle(f"{title}\n{n} filters of {c}x{kh}x{kw}; {scale}\n(each filter on its own scale)", fontsize=10)
    return fig


def _signed_tile_grid(fig, ax, w, per_filter: bool, label: str):
    """Draw (F, C, KH, KW) as a grid of tiles (row = filter, column = input channel) on
    one Axes, with a diverging colour map centred on zero and a colour bar."""
    n, c = w.shape[:2]
    if per_filter:
        peak = np.abs(w).max(axis=(1, 2, 3), keepdims=True)
        w = w / np.where(peak > 0, peak, 1)
        vmax = 1.0
    else:
        vmax = float(np.abs(w).max()) or 1.0
    grid = _tiles([[w[f, ch] for ch in range(c)] for f in range(n)])
    im = ax.imshow(grid, cmap=_diverging(), vmin=-vmax, vmax=vmax, interpolation="nearest")
    kh, kw = w.shape[2:]
    step = max(1, c // 16)
    ax.set_xticks([j * (kw + 1) + (kw - 1) / 2 for j in range(0, c, step)], [str(j) for j in range(0, c, step)])
    step = max(1, n // 32)
    ax.set_yticks([i * (kh + 1) + (kh - 1) / 2 for i in range(0, n, step)], [str(i) for i in range(0, n, step)])
    ax.tick_params(length=0, labelsize=8)
    ax.set_xlabel("input channel")
    ax.set_ylabel("filter")
    for side in ax.spines.values():
        side.set_visible(False)
    fig.colorbar(im, ax=ax, shrink=min(0.8, 4.0 / max(fig.get_figheight(), 1)), label=label)


def filters_per_channel(weights, layer: str = None, max_filters: int = 32, max_channels: int = 32) -> Figure:
    """A convolution's weights (F, C, KH, KW) as a grid: row f is filter f, column c its
    slice for input channel c (the first ``max_filters`` x ``max_channels``). Red is a
    positive weight, blue a negative one, each filter scaled to its largest |weight|, so
    within a row the channels it listens to stand out."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"plots.filters_per_channel: expected weights (F, C, KH, KW), got shape {w.shape}")
    n, c, kh, kw = w.shape
    w = w[:max_filters, :max_channels]
    rows, cols = w.shape[:2]
    cell = 0.32 if max(kh, kw) <= 3 else 0.42
    fig = _figure(cols * cell * kw / 3 + 2.2, rows * cell * kh / 3 + 1.3)
    ax = fig.add_subplot()
    _signed_tile_grid(fig, ax, w, per_filter=True, label="weight / largest |weight| of the filter")
    shown = "" if (rows, cols) == (n, c) else f"; first {rows} filters x {cols} channels shown"
    ax.set_title(f"Filters of layer {layer!r}: {n} x {c} x {kh}x{kw}{shown}" if layer else
                 f"Filters {n} x {c} x {kh}x{kw}{shown}", fontsize=11)
    return fig


def filter_gradients(gradients, layer: str = None, max_filters: int = 32, max_channels: int = 16) -> Figure:
    """d loss / d weight (F, C, KH, KW) of a convolution on one batch, on one signed scale
    shared by every filter (so the filters a training step would change most stand out):
    red where the loss grows with the weight (a step of gradient descent lowers it)."""
    g = np.asarray(gradients, dtype=np.float64)
    if g.ndim != 4:
        raise ValueError(f"plots.filter_gradients: expected gradients (F, C, KH, KW), got shape {g.shape}")
    n, c, kh, kw = g.shape
    if c == 1:
        # one channel: lay the filters out side by side, several rows, like the filters
        ncols = _columns(n, 12)
        g = np.concatenate([g, np.full((-(-n // ncols) * ncols - n, 1, kh, kw), np.nan)])
        g = g.reshape(-1, ncols, kh, kw)
        fig = _figure(max(0.8 * ncols + 2.0, 6.4), 0.85 * len(g) + 1.4)
        ax = fig.add_subplot()
        vmax = float(np.nanmax(np.abs(g))) or 1.0
        im = ax.imshow(_tiles([list(r) for r in g]), cmap=_diverging(), vmin=-vmax, vmax=vmax,
                       interpolation="nearest")
        for i in range(len(g)):
            for j in range(ncols):
                if i * ncols + j < n:
                    ax.text(j * (kw + 1) + (kw - 1) / 2, i * (kh + 1) - 0.7, f"#{i * ncols + j}", ha="center",
                            va="bottom", fontsize=8)
        _bare(ax)
        for side in ax.spines.values():
            side.set_visible(False)
        fig.colorbar(im, ax=ax, shrink=0.8, label="d loss / d weight")
    else:
        g = g[:max_filters, :max_channels]
        fig = _figure(g.shape[1] * 0.42 * kw / 3 + 2.4, g.shape[0] * 0.42 * kh / 3 + 1.3)
        ax = fig.add_subplot()
        _signed_tile_grid(fig, ax, g, per_filter=False, label="d loss / d weight")
    what = f"layer {layer!r}" if layer else "the layer"
    ax.set_title(f"Weight gradients of {what}\n({n} filters of {c}x{kh}x{kw}) on one batch;\n"
                 "red: the loss grows with the weight; one scale for all filters", fontsize=10,
                 pad=14 if c == 1 else 6)
    return fig


# ----- feature maps -----

def feature_maps(maps, image=None, max_channels: int = 16, title: str = None) -> Figure:
    """Several layers' feature maps for one image: one row per layer (name and shape on the
    left), its first ``max_channels`` channels side by side on one colour scale per layer
    (so a weak or dead channel looks dark), with the input image first.

    Args:
        maps: ``{layer name: (C, H, W) array}``, e.g. :func:`cnnlab.inspect.feature_maps`.
        image: the input image (C, H, W) in display space, shown in the first column.
    """
    where = "plots.feature_maps"
    items = [(name, np.asarray(m, dtype=np.float64)) for name, m in maps.items()]
    if not items or any(m.ndim != 3 for _, m in items):
        raise ValueError(f"{where}: expected a mapping of layer names to (C, H, W) arrays, got "
                         f"{[(n, m.shape) for n, m in items]}")
    lead = 1 if image is not None else 0
    ncols = lead + min(max(m.shape[0] for _, m in items), max_channels)
    fig = _figure(0.95 * ncols + 1.6, 1.05 * len(items) + 0.9)
    axes = fig.subplots(len(items), ncols, squeeze=False)
    for r, (name, m) in enumerate(items):
        shown = m[:max_channels]
        lo, hi = float(shown.min()), float(shown.max())
        im = None
        for j in range(ncols):
            ax = axes[r, j]
            ch = j - lead
            if j < lead:
                if r == 0:
                    _show(ax, image, where, "input", fontsize=9)
                else:
                    ax.axis("off")
                continue
            if ch >= len(shown):
                ax.axis("off")
                continue
            im = ax.imshow(shown[ch], cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1,
                           interpolation="nearest")
            _bare(ax)
            ax.set_title(f"#{ch}", fontsize=8, pad=2)
        first = axes[r, lead]
        c, h, w = m.shape
        first.set_ylabel(f"{name}\n{c}x{h}x{w}", fontsize=9, rotation=0, ha="right", va="center", labelpad=6)
        fig.colorbar(im, ax=list(axes[r, :]), shrink=0.9, pad=0.01, aspect=10)
    more = any(m.shape[0] > max_channels for _, m in items)
    fig.suptitle(title or "Feature maps, one row per layer (one colour scale per row"
                          + (f"; first {max_channels} channels" if more else "") + ")", fontsize=11)
    return fig


# ----- attribution -----

_METHOD_NOTES = {
    "occlusion": ("occlusion", "drop in p(class) when hidden"),
    "saliency": ("gradient saliency", "|d score / d pixel| (per image)"),
    "smoothgrad": ("SmoothGrad", "|mean gradient| (per image)"),
    "gradcam": ("Grad-CAM", "class activation (per image)"),
}


def _overlay(ax, image, heat, cmap, norm, where):
    """The image in grey, the heat map on top; the map's opacity grows with |value|, so
    the image shows through where the map is near zero."""
    # the image darkened, so that bright colours stand out on white strokes too
    ax.imshow(0.5 * _display(image, where), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    rgba = cmap(norm(heat))
    strength = np.abs(norm(heat) - norm(0.0)) / max(abs(1 - norm(0.0)), abs(norm(0.0)), 1e-12)
    rgba[..., 3] = 0.9 * np.clip(strength, 0, 1) ** 0.6
    ax.imshow(rgba, interpolation="bilinear" if heat.shape[0] >= 24 else "nearest")
    _bare(ax)


def attribution(images, heatmaps: dict, predicted=None, probability=None, labels=None, classes=None,
                targets=None, raw: bool = None, title: str = None) -> Figure:
    """Which pixels each decision rests on: one row per image, the image first, then one
    map per method drawn over the image.

    Args:
        images: (N, C, H, W) or one (C, H, W), display space.
        heatmaps: ``{method: (N, H, W) or (H, W)}`` with methods among ``'occlusion'``
            (signed: red where hiding a patch lowers the class's probability, blue where it
            raises it, on one scale for all images), ``'saliency'``, ``'smoothgrad'`` and
            ``'gradcam'`` (each scaled to its own maximum per image); other names are
            drawn like saliency.
        predicted, probability: (N,) the predicted class and its probability (titles).
        labels: (N,) the true classes; a wrong prediction's title is red.
        classes: class names.
        targets: (N,) the class each map explains, when not the prediction.
        raw: also draw each map on its own (default: for a single image).
        title: the figure's title.
    """
    where = "plots.attribution"
    imgs = np.asarray(images)
    if imgs.ndim == 3:
        imgs = imgs[None]
        heatmaps = {k: np.asarray(v)[None] for k, v in heatmaps.items()}
    n = len(imgs)
    maps = {k: np.asarray(v, dtype=np.float64).reshape((n,) + imgs.shape[2:]) for k, v in heatmaps.items()}
    raw = n == 1 if raw is None else raw
    per = 2 if raw else 1
    ncols = 1 + per * len(maps)
    names = _names(classes, 1 + max([int(np.max(a)) for a in (predicted, labels, targets) if a is not None] or [0]))
    one = n == 1
    fig = _figure(2.0 * ncols + (1.2 if one else 0.8), 2.1 * n + (1.1 if one else 0.9))
    axes = fig.subplots(n, ncols, squeeze=False)
    at = lambda a, i: None if a is None else np.asarray(a).reshape(-1)[i]  # noqa: E731
    for i in range(n):
        parts = []
        if labels is not None:
            parts.append(f"true {names[at(labels, i)]}")
        if predicted is not None:
            p = at(probability, i)
            parts.append(f"predicted {names[at(predicted, i)]}" + ("" if p is None else f" ({p:.0%})"))
        wrong = labels is not None and predicted is not None and at(labels, i) != at(predicted, i)
        _show(axes[i, 0], imgs[i], where, "\n".join(parts) or "image", fontsize=10,
              color=_WRONG if wrong else "black", fontweight="bold" if wrong else "normal")
        for m, (method, heat) in enumerate(maps.items()):
            label, unit = _METHOD_NOTES.get(method, (method, "relative magnitude"))
            if method == "occlusion":
                vmax = float(np.abs(heat).max()) or 1e-12
                norm, cmap, h = mcolors.Normalize(-vmax, vmax), _diverging(), heat[i]
            else:
                peak = float(np.abs(heat[i]).max()) or 1.0
                norm, cmap, h = mcolors.Normalize(0, 1), _diverging("inferno"), np.abs(heat[i]) / peak
            col = 1 + per * m
            if raw:
                im = axes[i, col].imshow(h, cmap=cmap, norm=norm, interpolation="nearest")
                _bare(axes[i, col])
                axes[i, col].set_title(label, fontsize=10)
                fig.colorbar(im, ax=axes[i, col], shrink=0.8, label=unit)
            _overlay(axes[i, col + per - 1], imgs[i], h, cmap, norm, where)
            if i == 0:
                axes[i, col + per - 1].set_title(f"{label}\nover the image" if raw else f"{label}\n{unit}", fontsize=10)
            if i == n - 1 and not raw:
                fig.colorbar(ScalarMappable(norm, cmap), ax=axes[:, col], location="bottom", shrink=0.9,
                             aspect=12, pad=0.01)
    explained = "" if targets is None else " (maps explain class " + \
        ", ".join(sorted({names[t] for t in np.asarray(targets).reshape(-1)})) + ")"
    fig.suptitle((title or "What the decisions rest on") + explained, fontsize=12)
    return fig


# ----- synthesised images -----

def synthesized(images, titles=None, title: str = "Activation maximisation", subtitles=None) -> Figure:
    """Images synthesised by gradient ascent (N, C, H, W) in [0, 1], e.g. the ``display``
    of :func:`cnnlab.inspect.maximize_activation` results, in a grid with one title each."""
    where = "plots.synthesized"
    imgs = np.asarray(images)
    if imgs.ndim == 3:
        imgs = imgs[None]
    n = len(imgs)
    ncols = n if n <= 6 else math.ceil(n / math.ceil(n / 8))
    nrows = -(-n // ncols)
    fig = _figure(1.45 * ncols + 0.3, 1.7 * nrows + 0.8)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        _show(ax, imgs[k], where, None)
        text = titles[k] if titles is not None else f"#{k}"
        if subtitles is not None:
            text += f"\n{subtitles[k]}"
        ax.set_title(text, fontsize=9)
    fig.suptitle(title, fontsize=11)
    return fig


# ----- top activations -----

def top_activations(top, images, labels=None, classes=None, max_channels: int = 6) -> Figure:
    """For each channel of a :class:`cnnlab.inspect.TopActivations`, its k strongest
    images with the receptive field of the strongest unit boxed in red, and below them the
    boxed patches alone (enlarged to one size). Units that see the whole image (a linear
    layer's) get the images alone.

    Args:
        top: what :func:`cnnlab.inspect.top_activations` returned.
        images: the dataset's images (N, C, H, W) it searched (display space).
        labels, classes: the dataset's labels and class names, shown under each image.
    """
    where = "plots.top_activations"
    imgs = np.asarray(images)
    rows = min(len(top.channels), max_channels)
    k = top.indices.shape[1]
    rf = top.receptive_field
    whole = rf.size == "all"
    wide = 1.15 * k + 1.4 >= 10
    fig = _figure(max(1.15 * k + 1.4, 6.5), (1.3 if whole else 2.35) * rows + (0.9 if wide else 1.3))
    subs = np.atleast_1d(fig.subfigures(rows, 1))
    names = _names(classes, 1 + int(np.max(labels)) if labels is not None else 0)
    for r in range(rows):
        sub = subs[r]
        axes = sub.subplots(1 if whole else 2, k, squeeze=False)
        for q in range(k):
            idx = int(top.indices[r, q])
            t, l, b, rt = (int(v) for v in top.boxes[r, q])
            ax = axes[0, q]
            _show(ax, imgs[idx], where)
            if not whole:
                if _spills(rf, imgs.shape[2:]):
                    # a field much larger than the image: the part inside it
                    ax.add_patch(Rectangle((l - 0.5, t - 0.5), rt - l, b - t, fill=False, edgecolor="#ff2d2d",
                                           linewidth=2.2))
                else:
                    # the whole field, also where it reaches past the border (a box clipped to the
                    # image would vanish into its edges)
                    ft = rf.start[0] + int(top.positions[r, q][0]) * rf.jump[0]
                    fl = rf.start[1] + int(top.positions[r, q][1]) * rf.jump[1]
                    ax.add_patch(Rectangle((fl - 0.5, ft - 0.5), rf.size[1], rf.size[0], fill=False,
                                           edgecolor="#ff2d2d", linewidth=1.6, clip_on=False))
            caption = f"{top.values[r, q]:.2g}"
            if labels is not None:
                caption = f"{names[int(labels[idx])]} · {caption}"
            ax.set_title(caption, fontsize=8, pad=2)
            if not whole:
                _show_patch(axes[1, q], top.patches[r][q], rf, top.positions[r, q], (t, l), where)
        axes[0, 0].set_ylabel("image", fontsize=9)
        if not whole:
            axes[1, 0].set_ylabel("patch", fontsize=9)
        sub.suptitle(f"{'unit' if whole else 'channel'} {int(top.channels[r])}", fontsize=10, x=0.02, ha="left",
                     fontweight="bold")
    if whole:
        lines = [f"Images that excite layer {top.layer!r} most", f"(top {k} of each unit, which sees the whole image)",
                 "caption: class · activation"]
    else:
        lines = [f"Images that excite layer {top.layer!r} most",
                 f"(top {k} of each channel; receptive field: {rf.size[0]}x{rf.size[1]} pixels)",
                 "caption: class · largest activation; red box: the strongest unit's receptive field;",
                 "blue in a patch: outside the image"]
    if wide:
        lines = [" ".join(lines[:2])] + ([" ".join(lines[2:])] if len(lines) > 2 else [])
    fig.suptitle("\n".join(lines), fontsize=11)
    return fig


def _spills(rf, hw) -> bool:
    """Whether a receptive field is so much larger than the image (over 1.25 times) that
    drawing all of it would dwarf the image: then only the part inside is drawn."""
    return rf.size != "all" and (rf.size[0] > 1.25 * hw[0] or rf.size[1] > 1.25 * hw[1])


def _show_patch(ax, patch, rf, position, corner, where):
    """A receptive-field patch at its full size: the part cut off by the image border (or
    reaching into the padding) is left transparent over a light blue background. A field
    far larger than the image shows only the part inside it."""
    shown = _display(patch, where)
    rgba = np.zeros(shown.shape[:2] + (4,))
    rgba[..., :3] = shown[..., None] if shown.ndim == 2 else shown
    rgba[..., 3] = 1.0
    if rf.size != "all" and not _spills(rf, rf.input_hw):
        top = rf.start[0] + int(position[0]) * rf.jump[0]
        left = rf.start[1] + int(position[1]) * rf.jump[1]
        full = np.zeros(tuple(rf.size) + (4,))
        dt, dl = corner[0] - top, corner[1] - left
        full[dt:dt + rgba.shape[0], dl:dl + rgba.shape[1]] = rgba
        rgba = full
    ax.set_facecolor("#b9cde5")
    ax.imshow(rgba, interpolation="nearest")
    _bare(ax)


# ----- feature space -----

def embedding(points, labels, classes=None, knn=None, method: str = "t-SNE", what: str = None) -> Figure:
    """Points (N, 2) from :func:`cnnlab.inspect.embed`, coloured by class, each class's
    name written at the middle of its points, with a legend and, in the title, the
    10-NN accuracy: ``knn`` is a fraction for the 2-D map, or a pair (2-D map, feature space)."""
    p = np.asarray(points, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if p.ndim != 2 or p.shape[1] != 2 or y.shape != (len(p),):
        raise ValueError(f"plots.embedding: expected points (N, 2) and labels (N,), got {p.shape} and {y.shape}")
    names = _names(classes, int(y.max()) + 1)
    from matplotlib import colormaps
    palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
    fig = _figure(8.2, 6.6)
    ax = fig.add_subplot()
    for c in range(len(names)):
        sel = y == c
        if not sel.any():
            continue
        ax.scatter(p[sel, 0], p[sel, 1], s=9, color=palette(c % palette.N), alpha=0.75, linewidths=0,
                   label=f"{names[c]} ({int(sel.sum())})")
    for c in range(len(names)):
        sel = y == c
        if sel.any():
            mx, my = np.median(p[sel], axis=0)
            ax.text(mx, my, names[c], fontsize=12, fontweight="bold", ha="center", va="center", color="black",
                    path_effects=[patheffects.withStroke(linewidth=3, foreground="white")])
    ax.legend(title="class (images)", loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=2.5,
              fontsize=9, frameon=False)
    axis = "PC" if method.lower() == "pca" else method
    ax.set_xlabel(f"{axis} 1")
    ax.set_ylabel(f"{axis} 2")
    if method.lower() != "pca":
        ax.set_xticks([])
        ax.set_yticks([])
    title = f"{method} of {len(p)} images' {what or 'features'}"
    if knn is not None:
        in_map, in_features = knn if isinstance(knn, tuple) else (knn, None)
        title += f"\n10-nearest-neighbour accuracy: {in_map:.1%} in this 2-D map"
        if in_features is not None:
            title += f", {in_features:.1%} in the feature space"
    ax.set_title(title, fontsize=11)
    return fig


def neighbors(queries, images, feature_indices, pixel_indices, labels=None, query_labels=None,
              classes=None) -> Figure:
    """Nearest neighbours of a few query images, in feature space (left) beside pixel
    space (right): one row per query; a neighbour's class is green when it is the
    query's, red otherwise.

    Args:
        queries: (Q, C, H, W) query images, display space.
        images: (N, C, H, W) the images searched.
        feature_indices, pixel_indices: (Q, k) indices into ``images``, nearest first
            (:func:`cnnlab.inspect.nearest_neighbors`, :func:`cnnlab.inspect.pixel_neighbors`).
        labels: (N,) the searched images' classes; query_labels: (Q,).
    """
    where = "plots.neighbors"
    q = np.asarray(queries)
    if q.ndim == 3:
        q = q[None]
    imgs = np.asarray(images)
    fi, pi = np.atleast_2d(feature_indices), np.atleast_2d(pixel_indices)
    nq, k = fi.shape
    top = 1 + max([int(np.max(a)) for a in (labels, query_labels) if a is not None] or [0])
    names = _names(classes, top)
    fig = _figure(1.05 * (2 * k + 1.7) + 1.2, 1.3 * nq + 1.2)
    left, mid, right = fig.subfigures(1, 3, width_ratios=[1.7, k, k], wspace=0.03)

    def score(idx):
        if labels is None or query_labels is None:
            return ""
        same = sum(int(labels[j]) == int(query_labels[i]) for i, row in enumerate(idx) for j in row)
        return f"\n{same} of {idx.size} of the query's class"

    la = left.subplots(nq, 1, squeeze=False)
    for i in range(nq):
        _show(la[i, 0], q[i], where, None)
        if query_labels is not None:
            la[i, 0].set_ylabel(names[int(query_labels[i])], fontsize=10, rotation=0, ha="right", va="center")
    left.suptitle("query", fontsize=10, fontweight="bold")
    for sub, idx, what in ((mid, fi, "feature space"), (right, pi, "pixel space")):
        axes = sub.subplots(nq, k, squeeze=False)
        for i in range(nq):
            for j in range(k):
                n = int(idx[i, j])
                _show(axes[i, j], imgs[n], where)
                if labels is not None:
                    same = query_labels is not None and int(labels[n]) == int(query_labels[i])
                    axes[i, j].set_title(names[int(labels[n])], fontsize=8, pad=2,
                                         color=_RIGHT if same or query_labels is None else _WRONG)
        sub.suptitle(f"nearest in {what}{score(idx)}", fontsize=10, fontweight="bold")
        sub.set_facecolor("#f4f6f8" if what == "feature space" else "white")
    return fig


# ----- metrics -----

def confusion(counts, classes=None, title: str = None) -> Figure:
    """A confusion matrix (K, K) (rows: true class, columns: predicted), twice: the counts
    (logarithmic colours, so single mistakes show beside thousands of right answers), and
    each row as percentages with only the errors coloured (the diagonal, per-class
    accuracy, is written in green)."""
    m = np.asarray(counts)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"plots.confusion: expected a square (K, K) matrix, got shape {m.shape}")
    k = len(m)
    names = _names(classes, k)
    rates = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = max(4.6, 0.5 * k + 2.2)
    fig = _figure(2 * size + 1.8, size)
    a1, a2 = fig.subplots(1, 2)
    # the scale starts below 1 so that a single image shows light blue, not white
    im = a1.imshow(np.where(m > 0, m, np.nan), cmap=_diverging("Blues"),
                   norm=mcolors.LogNorm(0.3, max(int(m.max()), 2)), interpolation="nearest")
    fig.colorbar(im, ax=a1, shrink=0.8, label="images (log scale)")
    off = rates.copy()
    np.fill_diagonal(off, np.nan)
    worst = float(np.nanmax(off)) if k > 1 and np.nanmax(off) > 0 else 1e-3
    im2 = a2.imshow(np.where(off > 0, off * 100, np.nan), cmap=_diverging("Reds"), vmin=0, vmax=worst * 100,
                    interpolation="nearest")
    fig.colorbar(im2, ax=a2, shrink=0.8, label="% of the true class (errors only)")
    small = 9 if k <= 10 else 7
    for i in range(k):
        for j in range(k):
            if m[i, j]:
                a1.text(j, i, f"{m[i, j]:d}", ha="center", va="center", fontsize=small,
                        color="white" if m[i, j] > m.max() ** 0.75 else "black")
            if i == j:
                a2.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, color="#dff3e4"))
                a2.text(j, i, f"{100 * rates[i, j]:.1f}" if rates[i, j] < 1 else "100", ha="center", va="center",
                        fontsize=small - 1, color=_RIGHT, fontweight="bold")
            elif rates[i, j] > 0:
                a2.text(j, i, f"{100 * rates[i, j]:.1f}", ha="center", va="center", fontsize=small - 1,
                        color="white" if rates[i, j] > 0.6 * worst else "black")
    rotate = 45 if max(len(c) for c in names) > 3 else 0
    for ax, t in ((a1, "counts"), (a2, "row-normalised (%)")):
        ax.set_xticks(range(k), names, rotation=rotate, ha="right" if rotate else "center", fontsize=9)
        ax.set_yticks(range(k), names, fontsize=9)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(t, fontsize=11)
    acc = np.trace(m) / max(m.sum(), 1)
    fig.suptitle(title or f"Confusion matrix: {int(m.sum())} images, accuracy {acc:.2%}", fontsize=12)
    return fig


def curves(metrics: dict, title: str = "Training curves") -> Figure:
    """Loss, accuracy and learning rate per epoch, from :func:`cnnlab.inspect.read_metrics`
    (``train_loss``, ``test_loss``, ``train_accuracy``, ``test_accuracy``, ``lr``; any
    may be missing)."""
    epochs = metrics.get("epoch") or list(range(1, 1 + max(len(v) for v in metrics.values())))

    def series(key):
        v = metrics.get(key)
        if not v or all(x is None for x in v):
            return None
        return np.array([np.nan if x is None else float(x) for x in v])

    has_lr = series("lr") is not None
    fig = _figure(13.0 if has_lr else 9.5, 4.0)
    axes = fig.subplots(1, 3 if has_lr else 2)
    style = dict(marker="o" if len(epochs) <= 30 else None, markersize=4)
    for ax, what, scale in ((axes[0], "loss", 1), (axes[1], "accuracy", 100)):
        for split, colour in (("train", "#1f77b4"), ("test", "#d62728")):
            s = series(f"{split}_{what}")
            if s is not None:
                ax.plot(epochs, s * scale, color=colour, label=split, **style)
        ax.set_xlabel("epoch")
        ax.set_ylabel(what + (" (%)" if scale == 100 else ""))
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(what)
    test = series("test_accuracy")
    if test is not None and np.isfinite(test).any():
        best = int(np.nanargmax(test))
        axes[1].plot([epochs[best]], [test[best] * 100], marker="*", markersize=14, color="#d62728",
                     linestyle="none", label=f"best test {test[best]:.2%} (epoch {epochs[best]})")
        axes[1].legend(loc="lower right")
    if has_lr:
        axes[2].plot(epochs, series("lr"), color="#2ca02c", **style)
        axes[2].set_xlabel("epoch")
        axes[2].set_ylabel("learning rate (end of epoch)")
        axes[2].set_title("learning rate")
        axes[2].grid(alpha=0.3)
        axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    from matplotlib.ticker import MaxNLocator
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=12)
    return fig
