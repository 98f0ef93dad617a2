"""A trained classifier, its test set and its training log, turned into pictures: the
steps behind ``cnnlab inspect TOOL`` (one picture each) and ``cnnlab report`` (all of them
in one self-contained HTML page).

A :class:`Subject` holds what every picture needs: the model, its input shape, class
names and input normalisation, and the test images. Each ``*_figure`` function chooses
sensible defaults for any zoo model, runs the array-returning tools of
:mod:`cnnlab.inspect` and draws the result with :mod:`cnnlab.inspect.plots` (so this
module needs matplotlib, as that one does).

Defaults that depend on the architecture are found by watching one forward pass
(:func:`default_layers`): the feature-map rows are the activations and poolings (for a
residual network, the blocks' outputs), and Grad-CAM, top activations and the
per-channel syntheses use the first of them after the last convolution, i.e. the last
convolution's output after its ReLU when there is one.
"""
from __future__ import annotations

import base64
import html
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..autograd import Tensor, no_grad
from ..nn import (ELU, GELU, AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, Conv2d, LeakyReLU, LocallyConnected2d,
                  MaxPool2d, Module, PReLU, ReLU, Sigmoid, Tanh)
from . import plots
from ._common import inspecting, model_dtype
from .attribution import grad_cam, occlusion, saliency, smoothgrad
from .features import embed, extract_features, knn_accuracy, nearest_neighbors, pixel_neighbors
from .layers import capture, get_layer, layer_names
from .maps import feature_maps
from .metrics import confusion_matrix, read_metrics
from .synthesis import maximize_activation
from .top import top_activations
from .weights import filter_gradients, layer_filters

_ACTIVATIONS = (ReLU, LeakyReLU, PReLU, ELU, GELU, Sigmoid, Tanh)
_POOLS = (MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, AdaptiveMaxPool2d)
_CONVS = (Conv2d, LocallyConnected2d)
SALIENCY_METHODS = ("smoothgrad", "gradient", "gradcam")


@dataclass
class Subject:
    """A trained model and the data to look at it with.

    Attributes:
        model: the model (any :class:`cnnlab.nn.Module` classifier).
        in_shape: (C, H, W) of its input.
        classes: the class names.
        mean, std: (C,) the normalisation it was trained with (0-1 scale).
        images, labels: the test images (N, C, H, W) (uint8, or floats in [0, 1]) and
            labels (N,); may be None for pictures that need no data.
        name: what to call the model in titles, e.g. "lenet5 on mnist".
    """
    model: Module
    in_shape: tuple
    classes: list
    mean: np.ndarray
    std: np.ndarray
    images: np.ndarray = None
    labels: np.ndarray = None
    name: str = "model"
    _layers: tuple = field(default=None, repr=False)
    _cost: int = field(default=None, repr=False)

    def display(self, images) -> np.ndarray:
        """Dataset images (uint8 or [0, 1]) as float32 in [0, 1]."""
        a = np.asarray(images)
        return a.astype(np.float32) / 255 if a.dtype == np.uint8 else a.astype(np.float32)

    def prepare(self, display) -> np.ndarray:
        """Display-space images in [0, 1] -> what the model takes (normalised, its dtype)."""
        d = np.asarray(display, dtype=np.float64)
        shape = (-1, 1, 1) if d.ndim == 3 else (1, -1, 1, 1)
        x = (d - self.mean.reshape(shape)) / self.std.reshape(shape)
        return x.astype(model_dtype(self.model))

    def transform(self, x, rng=None):
        """A batch transform for the dataset tools: [0, 1] images -> normalised."""
        return self.prepare(x)

    def affordable(self, n: int, budget: float = 5e9, least: int = 500) -> int:
        """How many images (at most n, at least ``least``) one forward pass each can afford
        in a budget of multiply-adds: all 10,000 MNIST test images for LeNet-5 (0.4M per
        image), 500 for a ResNet-20 (41M), so a report on a big model stays minutes long."""
        if self._cost is None:
            from ..summary import summary
            self._cost = max(1, summary(self.model, tuple(self.in_shape), dtype=model_dtype(self.model),
                                        verbose=False).total_mult_adds)
        return int(min(n, max(least, budget // self._cost)))

    def need_data(self, what: str):
        if self.images is None:
            raise ValueError(f"{what} needs the test images; none were given")

    def logits(self, display, batch_size: int = 500) -> np.ndarray:
        """(N, K) logits of display-space images, in eval mode without the tape."""
        with inspecting(self.model, "logits"), no_grad():
            return np.concatenate([self.model(Tensor(self.prepare(self.display(display[i:i + batch_size])))).data
                                   for i in range(0, len(display), batch_size)]).astype(np.float64)

    def background(self):
        """The colour (C,) in [0, 1] of the images' plain background, when they have one:
        the most common value of the border pixels, if at least 40% of them share it
        (MNIST's black); else None (photographs)."""
        if self.images is None:
            return None
        d = self.display(self.images[:500])
        border = np.concatenate([d[:, :, 0].reshape(len(d), d.shape[1], -1), d[:, :, -1].reshape(len(d), d.shape[1], -1),
                                 d[:, :, :, 0].reshape(len(d), d.shape[1], -1),
                                 d[:, :, :, -1].reshape(len(d), d.shape[1], -1)], axis=2)
        out = []
        for c in range(border.shape[1]):
            values, counts = np.unique(np.round(border[:, c] * 255), return_counts=True)
            if counts.max() < 0.4 * counts.sum():
                return None
            out.append(values[counts.argmax()] / 255)
        return np.asarray(out)


def default_layers(model: Module, in_shape) -> tuple:
    """(map layers, last-conv layer) for ``model`` on inputs of ``in_shape``.

    The map layers are the distinct 4-D outputs of activations, poolings and containers
    (a residual block's output), in the order they run, leaving out layers run more than
    once (their name would be ambiguous); the last-conv layer is the first of them after
    the last convolution (its output after the ReLU), or that convolution itself when no
    such layer follows; None for a model without convolutions."""
    x = Tensor(np.zeros((1,) + tuple(in_shape), model_dtype(model)))
    with inspecting(model, "default_layers"):
        caught = capture(model, x, layer_names(model))
    caught.pop("output")
    repeated = {n.split(" (call ")[0] for n in caught if " (call " in n}
    seen, maps, last_conv, after = set(), [], None, None
    for name, out in caught.items():
        base = name.split(" (call ")[0]
        m = get_layer(model, base)
        if isinstance(m, _CONVS):
            last_conv, after = name, None
        if base in repeated:
            continue   # (a residual block's ReLU: its second call's output is the block's, kept below)
        new = id(out) not in seen
        seen.add(id(out))
        if not new or out.ndim != 4:
            continue
        container = next(m.children(), None) is not None
        if isinstance(m, _ACTIVATIONS) or isinstance(m, _POOLS) or container:
            maps.append(name)
            if last_conv is not None and after is None and not isinstance(m, _POOLS):
                after = name
    if last_conv is None:
        return maps, None
    return maps, after or last_conv


def _layers(subject: Subject) -> tuple:
    if subject._layers is None:
        subject._layers = default_layers(subject.model, subject.in_shape)
    return subject._layers


def _spread(items: list, most: int) -> list:
    """At most ``most`` items, evenly spread, keeping the first and the last."""
    if len(items) <= most:
        return list(items)
    picks = np.unique(np.round(np.linspace(0, len(items) - 1, most)).astype(int))
    return [items[i] for i in picks]


def _check_channels(channels, n: int, layer: str):
    bad = [c for c in channels if not 0 <= c < n]
    if bad:
        raise ValueError(f"channel {bad[0]} is out of range: layer {layer!r} has {n} channels (0 to {n - 1})")


def _conv_layer_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, Conv2d)]


def _cam_layer(subject: Subject, layer: str = None) -> str:
    if layer is not None:
        get_layer(subject.model, layer)
        return layer
    cam = _layers(subject)[1]
    if cam is None:
        raise ValueError(f"{type(subject.model).__name__} has no convolution layer; pass a layer")
    return cam


# ----- one picture per tool -----

def filters_figure(subject: Subject, layer: str = None, gradients: bool = False, batch: int = 256):
    """The first Conv2d's filters (or ``layer``'s, one tile per input channel when it does
    not see the image); with ``gradients``, d loss / d weight on ``batch`` test images."""
    model = subject.model
    convs = _conv_layer_names(model)
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer, so it has no filters to show")
    layer = convs[0] if layer is None else layer
    w = layer_filters(model, layer)
    if gradients:
        subject.need_data("filter gradients")
        x = subject.prepare(subject.display(subject.images[:batch]))
        g = filter_gradients(model, x, subject.labels[:batch], layer)
        return plots.filter_gradients(g, layer)
    if w.shape[1] in (1, 3) and layer == convs[0]:
        return plots.filters(w, title=f"Filters of the first layer ({layer!r})")
    return plots.filters_per_channel(w, layer)


def maps_figure(subject: Subject, image, layers=None, channels=None, most_layers: int = 6):
    """Feature maps of ``layers`` (default: up to ``most_layers`` of the activations and
    poolings, see :func:`default_layers`) for one display-space image (C, H, W)."""
    if layers is None:
        layers = _spread(_layers(subject)[0], most_layers)
        if not layers:
            raise ValueError(f"{type(subject.model).__name__} has no layer with feature maps (N, C, H, W)")
    maps = feature_maps(subject.model, subject.prepare(image), layers)
    if channels is not None:
        for name, m in maps.items():
            _check_channels(channels, len(m), name)
        maps = {name: m[list(channels)] for name, m in maps.items()}
    kinds = {name: type(m).__name__ for name, m in subject.model.named_modules()}
    maps = {f"{name} ({kinds.get(name.split(' (call ')[0], '?')})": m for name, m in maps.items()}
    return plots.feature_maps(maps, image, max_channels=16 if channels is None else len(channels))


def _predict_one(subject: Subject, image):
    p = _softmax(subject.logits(image[None]))[0]
    return int(p.argmax()), float(p.max())


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def occlusion_settings(subject: Subject) -> dict:
    """Patch and stride scaled to the image (6 and 2 pixels on 28x28, 2 and 1 on 8x8), and
    the background colour as the baseline where the images have a plain one (hiding a
    patch of an MNIST digit then blacks it out instead of painting a grey square)."""
    h, w = subject.in_shape[1:]
    patch = max(2, round(min(h, w) / 5))
    bg = subject.background()
    baseline = 0.0 if bg is None else ((bg - subject.mean) / subject.std).reshape(-1, 1, 1)
    return dict(patch=patch, stride=max(1, patch // 3), baseline=baseline)


def occlusion_figure(subject: Subject, image, target=None, patch=None, stride=None, label=None):
    """Occlusion map of one display-space image (C, H, W), over the image."""
    settings = occlusion_settings(subject)
    settings.update({k: v for k, v in (("patch", patch), ("stride", stride)) if v is not None})
    r = occlusion(subject.model, subject.prepare(image), target=target, **settings)
    pred, prob = _predict_one(subject, image)
    return plots.attribution(image, {"occlusion": r.heatmap}, predicted=[pred], probability=[prob],
                             labels=None if label is None else [label], classes=subject.classes,
                             targets=None if target is None else [r.target],
                             title=f"Occlusion: a {settings['patch']}x{settings['patch']} square hidden every "
                                   f"{settings['stride']} pixels")


def saliency_figure(subject: Subject, image, method: str = "smoothgrad", target=None, layer=None, label=None):
    """Gradient saliency, SmoothGrad or Grad-CAM (on ``layer``, default the last
    convolution after its ReLU) of one display-space image, over the image."""
    if method not in SALIENCY_METHODS:
        raise ValueError(f"method must be one of {', '.join(SALIENCY_METHODS)}, got {method!r}")
    x = subject.prepare(image)
    if method == "gradcam":
        r = grad_cam(subject.model, x, _cam_layer(subject, layer), target=target)
        key = "gradcam"
    else:
        r = (smoothgrad if method == "smoothgrad" else saliency)(subject.model, x, target=target)
        key = "smoothgrad" if method == "smoothgrad" else "saliency"
    pred, prob = _predict_one(subject, image)
    title = {"gradcam": f"Grad-CAM on layer {getattr(r, 'layer', '')!r}", "gradient": "Gradient saliency",
             "smoothgrad": "SmoothGrad: gradients averaged over 25 noisy copies"}[method]
    return plots.attribution(image, {key: r.heatmap}, predicted=[pred], probability=[prob],
                             labels=None if label is None else [label], classes=subject.classes,
                             targets=None if target is None else [r.target], title=title)


def _maximize_kwargs(subject: Subject, steps: int) -> dict:
    """maximize_activation's settings: its defaults (chosen on 28x28 and 32x32 images), the
    background colour where the images have one, and on images under 16 pixels a side no
    jitter and half the blur (a one-pixel shift or a 0.6-pixel blur wipes out an 8x8 digit:
    the images come out faint, and the model gives them their class with p 0.2-0.6
    instead of 0.93-0.99)."""
    kw = dict(shape=tuple(subject.in_shape), steps=steps, mean=subject.mean, std=subject.std,
              background=subject.background())
    if min(subject.in_shape[1:]) < 16:
        kw.update(jitter=0, blur_sigma=0.3)
    return kw


def maximize_figure(subject: Subject, targets=None, layer=None, channels=None, steps: int = 200):
    """Images synthesised to maximise each class's score (``targets``, default every
    class) or, with ``layer``, each of ``channels`` of that layer (default its first 8)."""
    model = subject.model
    kw = _maximize_kwargs(subject, steps)
    if layer is None and channels is None:
        targets = range(len(subject.classes)) if targets is None else targets
        results = [maximize_activation(model, target_class=int(t), **kw) for t in targets]
        probs = _softmax(subject.logits(np.stack([r.display for r in results])))
        titles = [subject.classes[int(t)] for t in targets]
        subs = [f"p = {probs[i, int(t)]:.2f}" for i, t in enumerate(targets)]
        return plots.synthesized(np.stack([r.display for r in results]), titles,
                                 "Images that maximise each class's score (p: the model's probability for it)", subs)
    layer = _cam_layer(subject, layer)
    if channels is None:
        n = _output_channels(subject, layer)
        channels = list(range(min(n, 8)))
    results = [maximize_activation(model, layer, int(c), **kw) for c in channels]
    return plots.synthesized(np.stack([r.display for r in results]), [f"channel {c}" for c in channels],
                             f"Images that maximise channels of layer {layer!r}",
                             [f"act. {r.start_value:.2g} → {r.final_value:.2g}" for r in results])


def _output_channels(subject: Subject, layer: str) -> int:
    x = Tensor(np.zeros((1,) + tuple(subject.in_shape), model_dtype(subject.model)))
    with inspecting(subject.model, "layer"):
        out = capture(subject.model, x, [layer])
    if layer not in out:
        raise ValueError(f"layer {layer!r} did not run in the forward pass")
    return out[layer].shape[1]


def top_result(subject: Subject, layer=None, channels=None, k: int = 9, limit: int = None, pick: int = 4):
    """:func:`cnnlab.inspect.top_activations` on the test images (the first ``limit``):
    ``channels``, or else the ``pick`` channels whose top-k images excite them most."""
    subject.need_data("top activations")
    layer = _cam_layer(subject, layer)
    images = subject.images if limit is None else subject.images[:limit]
    if channels is not None:
        _check_channels(channels, _output_channels(subject, layer), layer)
    top = top_activations(subject.model, images, layer, channels=channels, k=k, transform=subject.transform)
    if channels is None and len(top.channels) > pick:
        keep = np.sort(np.argsort(-np.median(top.values, axis=1), kind="stable")[:pick])
        top.channels, top.indices, top.values = top.channels[keep], top.indices[keep], top.values[keep]
        top.positions, top.boxes = top.positions[keep], top.boxes[keep]
        top.patches = [top.patches[i] for i in keep]
    return top


def top_figure(subject: Subject, layer=None, channels=None, k: int = 9, limit: int = None):
    top = top_result(subject, layer, channels, k, limit)
    return plots.top_activations(top, subject.images, subject.labels, subject.classes,
                                 max_channels=len(top.channels))


def _sample(subject: Subject, samples: int) -> np.ndarray:
    """Indices of ``samples`` test images drawn at random (seed 0), in dataset order."""
    n = len(subject.images)
    if samples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, samples, replace=False))


def embedding_figure(subject: Subject, samples: int = 1000, method: str = "tsne", layer=None, features=None):
    """t-SNE (or PCA) of the penultimate features (or ``layer``'s output) of ``samples``
    test images, with their 10-NN accuracy. Returns (figure, accuracy)."""
    subject.need_data("the feature-space picture")
    if features is None:
        idx = _sample(subject, samples)
        f, y = extract_features(subject.model, (subject.images[idx], subject.labels[idx]), layer=layer,
                                transform=subject.transform)
    else:
        f, y = features
    points = embed(f, method=method, perplexity=min(30.0, (len(f) - 1) / 3))
    k = min(10, len(f) - 1)
    acc = (knn_accuracy(points, y, k=k), knn_accuracy(f, y, k=k))  # in the 2-D map, in the feature space
    what = "penultimate features" if layer is None else f"layer {layer!r} outputs"
    fig = plots.embedding(points, y, subject.classes, knn=acc, method="t-SNE" if method == "tsne" else "PCA",
                          what=f"{what} ({f.shape[1]} numbers each)")
    return fig, acc


def neighbors_figure(subject: Subject, queries=None, samples: int = None, k: int = 6, layer=None, image=None,
                     features=None):
    """Nearest neighbours of test images ``queries`` (indices; default 5 of different
    classes), or of a display-space ``image``, among ``samples`` test images (default
    all; drawn as :func:`_sample` draws them), in feature space and in pixel space.
    ``features``: their (features, labels), when already extracted."""
    subject.need_data("nearest neighbours")
    idx = _sample(subject, samples or len(subject.images))
    pool = subject.images[idx]
    if features is None:
        features = extract_features(subject.model, (pool, subject.labels[idx]), layer=layer,
                                    transform=subject.transform)
    f, y = features
    shown = subject.display(pool)
    if image is not None:
        qf, _ = extract_features(subject.model, image[None], layer=layer, transform=subject.transform)
        q_img, q_lab, own = image[None], None, [None]
    else:
        if queries is None:
            queries, seen = [], set()
            for i in idx:
                if int(subject.labels[i]) not in seen:
                    seen.add(int(subject.labels[i]))
                    queries.append(int(i))
                if len(queries) == 5:
                    break
        queries = [int(q) for q in queries]
        qf, _ = extract_features(subject.model, subject.images[queries], layer=layer, transform=subject.transform)
        q_img, q_lab = subject.display(subject.images[queries]), subject.labels[queries]
        where = {int(j): p for p, j in enumerate(idx)}
        own = [where.get(q) for q in queries]
    k = min(k, len(pool) - 1)
    fi = nearest_neighbors(qf, f, k + 1)
    pi = pixel_neighbors(q_img, shown, k + 1)
    # a query that is among the searched images finds itself first: leave it out
    drop = lambda rows: np.stack([[j for j in r if j != o][:k] for r, o in zip(rows, own)])  # noqa: E731
    return plots.neighbors(q_img, shown, drop(fi), drop(pi), labels=y, query_labels=q_lab, classes=subject.classes)


def confusion_figure(subject: Subject):
    """Returns (figure, :class:`cnnlab.inspect.Confusion`) on the test images."""
    subject.need_data("the confusion matrix")
    conf = confusion_matrix(subject.model, (subject.images, subject.labels), transform=subject.transform,
                            num_classes=len(subject.classes))
    return plots.confusion(conf.counts, subject.classes,
                           f"Confusion matrix of {subject.name}: {len(subject.images):,} test images, "
                           f"accuracy {conf.accuracy:.2%}"), conf


def curves_figure(metrics_path, name: str = None):
    return plots.curves(read_metrics(metrics_path), f"Training curves of {name}" if name else "Training curves")


# ----- the report -----

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1180px;margin:0 auto;padding:1em 1.5em;
color:#1f2328;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:2em}
img{max-width:100%;height:auto;display:block;margin:.6em 0}
table{border-collapse:collapse;font-size:.9em;margin:.6em 0}
td,th{border:1px solid #d0d7de;padding:.25em .6em;text-align:right}th{background:#f6f8fa}
td:first-child,th:first-child{text-align:left}
.note{color:#57606a;font-size:.95em;max-width:60em}.key{font-size:1.15em}
nav ol{columns:2;font-size:.95em}code{background:#f6f8fa;padding:0 .25em}
.bad{color:#cf222e;font-weight:bold}
"""


class _Page:
    """The report being written: sections of HTML, with every picture inlined."""

    def __init__(self):
        self.sections = []   # (id, title, html)

    def add(self, ident, title, body):
        self.sections.append((ident, title, body))

    @staticmethod
    def img(fig, alt: str) -> str:
        data = base64.b64encode(plots.png_bytes(fig)).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(head, rows) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>")
    return "".join(out) + "</table>"


def _p(text, cls="note") -> str:
    return f'<p class="{cls}">{text}</p>'


def _attribution_images(subject: Subject, probs: np.ndarray, idx: np.ndarray, count: int = 6) -> list:
    """Test images (indices) to explain: correctly classified ones of different classes,
    in dataset order, then the most confident mistake among ``idx`` if there is one."""
    labels, pred = subject.labels[idx], probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != labels)
    chosen, seen = [], set()
    for j in np.flatnonzero(pred == labels):
        if len(chosen) == count - (1 if len(wrong) else 0):
            break
        if int(labels[j]) not in seen:
            seen.add(int(labels[j]))
            chosen.append(int(idx[j]))
    if len(wrong):
        chosen.append(int(idx[wrong[np.argmax(probs[wrong].max(axis=1))]]))
    return chosen


def build_report(subject: Subject, metrics_path=None, samples: int = 1000, checkpoint: str = None,
                 meta: dict = None, log=None) -> str:
    """The whole report as one HTML string: every picture a base64 PNG inside it, no
    scripts, no links out. ``samples``: test images for the feature-space pictures."""
    subject.need_data("the report")
    say = log or (lambda *a: None)
    page = _Page()
    model, classes = subject.model, subject.classes
    t_start = last = time.perf_counter()
    step = [None]

    def timed(what):
        nonlocal last
        now = time.perf_counter()
        if step[0]:
            say(f"  {step[0]}: {now - last:.1f} s")
        step[0], last = what, now

    # --- accuracy and the confusion matrix (one pass over the test set) ---
    timed("confusion matrix")
    fig, conf = confusion_figure(subject)
    counts = conf.counts
    per_class = conf.per_class_accuracy
    rows = []
    for c, name in enumerate(classes):
        off = counts[c].copy()
        off[c] = 0
        worst = int(off.argmax())
        often = f"{html.escape(classes[worst])} ({int(off[worst])})" if off[worst] else "–"
        rows.append((html.escape(name), f"{int(counts[c].sum()):,}", f"{per_class[c]:.2%}", often))
    page.add("accuracy", "Test accuracy and confusion matrix",
             _p(f"Accuracy <b>{conf.accuracy:.2%}</b> ({int(np.trace(counts)):,} of {int(counts.sum()):,} test "
                f"images), mean cross-entropy {conf.loss:.4f}.", "key")
             + _table(("class", "test images", "accuracy", "most often mistaken for (images)"), rows)
             + _p("Left: how many images of each true class (row) were given each class (column); the colours "
                  "are logarithmic so that single mistakes show. Right: each row as percentages, with only the "
                  "mistakes coloured, on a scale set by the largest one; the diagonal (green) is the per-class "
                  "accuracy.")
             + page.img(fig, "confusion matrix"))

    # --- the model ---
    timed("model summary")
    from ..summary import summary
    s = summary(model, tuple(subject.in_shape), dtype=model_dtype(model), verbose=False)
    fmt = lambda v: v if isinstance(v, str) else (f"{v[0]}x{v[1]}" if v[0] != v[1] else str(v[0]))  # noqa: E731
    rows = [(html.escape(f"{l.name} ({l.kind})"), "x".join(map(str, l.output_shape)), f"{l.params:,}",
             f"{l.mult_adds:,}", fmt(l.receptive_field), fmt(l.jump)) for l in s.layers]
    settings = (meta or {}).get("settings") or (meta or {}).get("args") or {}
    trained = ""
    if settings:
        keys = ("optimizer", "lr", "schedule", "batch_size", "weight_decay", "augment", "label_smoothing", "seed")
        trained = _p("Trained with " + ", ".join(f"<code>{k}={html.escape(str(settings[k]))}</code>" for k in keys
                                                 if k in settings) + ".")
    page.add("model", "The model",
             _p(f"{html.escape(subject.name)}: input {'x'.join(map(str, subject.in_shape))}, {len(classes)} classes, "
                f"<b>{s.total_params:,}</b> parameters, {s.total_mult_adds:,} multiply-adds per image. RF: the "
                "receptive field (input pixels one output unit sees); jump: input pixels between neighbouring "
                "units.") + trained
             + _table(("layer (type)", "output shape", "parameters", "mult-adds", "RF", "jump"), rows))

    # --- training curves ---
    timed("training curves")
    if metrics_path and os.path.isfile(metrics_path):
        page.add("curves", "Training curves",
                 _p("Loss and accuracy after each epoch on the training images (with augmentation, as trained) and "
                    "on the test images, and the learning rate at the end of each epoch.")
                 + page.img(curves_figure(metrics_path, subject.name), "training curves"))
    else:
        page.add("curves", "Training curves",
                 _p(f"No metrics file ({html.escape(str(metrics_path))}) was found, so there are no curves."))

    # --- filters ---
    timed("filters")
    convs = _conv_layer_names(model)
    if convs:
        body = _p("Each filter is a small image the layer slides over its input; the first layer's look at the "
                  "pixels directly, so edges, strokes and blobs show up. Mid-grey is zero.")
        body += page.img(filters_figure(subject), "first-layer filters")
        if len(convs) > 1:
            body += _p(f"The next convolution, layer <code>{html.escape(convs[1])}</code>, looks at the first "
                       "layer's feature maps: one tile per (filter, input channel), red positive, blue negative.")
            body += page.img(filters_figure(subject, convs[1]), "second-layer filters")
        batch = subject.affordable(256, least=32)
        body += _p("What one step of training would change: the gradient of the loss with respect to the first "
                   f"layer's weights on {batch} test images (small for a trained model).")
        body += page.img(filters_figure(subject, gradients=True, batch=batch), "filter gradients")
        page.add("filters", "Filters", body)
    else:
        page.add("filters", "Filters", _p("This model has no convolution layer."))

    # --- predictions on a sample, for choosing images ---
    idx = _sample(subject, samples)
    probs = _softmax(subject.logits(subject.images[idx]))
    chosen = _attribution_images(subject, probs, idx)
    shown = subject.display(subject.images[chosen])
    p_all = _softmax(subject.logits(shown))
    pred = p_all.argmax(axis=1)
    map_layers, cam = _layers(subject)

    # --- feature maps ---
    timed("feature maps")
    if map_layers:
        first = shown[0]
        page.add("maps", "Feature maps",
                 _p("What the layers output for one test image: one row per layer (after the activation or "
                    "pooling), one panel per channel, one colour scale per row, so a channel that stays dark "
                    "found nothing it responds to. Resolution falls and the number of channels grows with depth.")
                 + page.img(maps_figure(subject, first), "feature maps"))
    else:
        page.add("maps", "Feature maps", _p("This model has no layer with spatial feature maps."))

    # --- attribution ---
    timed("occlusion, saliency, Grad-CAM")
    x = subject.prepare(shown)
    heat = {"occlusion": occlusion(model, x, **occlusion_settings(subject)).heatmap,
            "saliency": saliency(model, x).heatmap,
            "smoothgrad": smoothgrad(model, x).heatmap}
    if cam is not None:
        heat["gradcam"] = grad_cam(model, x, cam).heatmap
    wrong = int((pred != subject.labels[chosen]).sum())
    page.add("attribution", "Which pixels the decisions rest on",
             _p(f"{len(chosen)} test images" + (f", {wrong} of them misclassified (red title)" if wrong else "")
                + ". Each map explains the predicted class. <b>Occlusion</b>: a "
                f"{occlusion_settings(subject)['patch']}-pixel square slides over the image and hides it (with the "
                "background colour); red where hiding lowers the predicted class's probability, blue where it raises "
                "it (one scale for all images). <b>Gradient saliency</b>: how strongly each pixel changes the "
                "class's score; <b>SmoothGrad</b>: the same averaged over 25 noisy copies, less speckled. "
                + (f"<b>Grad-CAM</b> on layer <code>{html.escape(cam)}</code>: where that layer's evidence for the "
                   "class lies, coarse but class-specific. " if cam else "")
                + "The gradient maps are scaled to each image's maximum.")
             + page.img(plots.attribution(shown, heat, predicted=pred, probability=p_all.max(axis=1),
                                          labels=subject.labels[chosen], classes=classes), "attribution maps"))

    # --- activation maximisation ---
    timed("activation maximisation")
    body = _p("Images synthesised by gradient ascent on the input, starting from faint noise, with jitter, blur and "
              "a pull towards the background keeping them readable; p is the probability the model gives the class "
              "it was made for.") + page.img(maximize_figure(subject), "class images")
    top = None
    if cam is not None:
        searched = subject.affordable(len(subject.images))
        top = top_result(subject, k=9, limit=searched)
        body += _p(f"The same for single channels of layer <code>{html.escape(cam)}</code> (the channels of the "
                   "next section); under each: the channel's mean activation before and after.")
        body += page.img(maximize_figure(subject, layer=cam, channels=[int(c) for c in top.channels]),
                         "channel images")
    page.add("maximize", "Activation maximisation", body)

    # --- top activations ---
    timed("top activations")
    if top is not None:
        rf = top.receptive_field
        size = "the whole image" if rf.size == "all" else f"{rf.size[0]}x{rf.size[1]} pixels"
        page.add("top", "Images that excite a channel most",
                 _p(f"For {len(top.channels)} channels of layer <code>{html.escape(cam)}</code> (those whose top "
                    f"images excite them most), the 9 of {searched:,} test images with the largest "
                    f"activation anywhere in the channel. The red box is the receptive field ({size}) of the unit "
                    "that fired; the patch below is what it saw.")
                 + page.img(plots.top_activations(top, subject.images, subject.labels, classes,
                                                  max_channels=len(top.channels)), "top activations"))
    else:
        page.add("top", "Images that excite a channel most", _p("This model has no convolution layer."))

    # --- feature space ---
    timed("t-SNE")
    f, y = extract_features(model, (subject.images[idx], subject.labels[idx]), transform=subject.transform)
    fig, acc = embedding_figure(subject, features=(f, y))
    page.add("tsne", "The feature space (t-SNE)",
             _p(f"The {f.shape[1]} numbers the last linear layer receives, for {len(f):,} test images, placed in a "
                "plane by t-SNE, which keeps neighbours together (distances between clusters mean little). "
                f"Classifying each image by the majority of its 10 nearest neighbours is right for <b>{acc[0]:.1%}</b> "
                f"of them in the plane, and for <b>{acc[1]:.1%}</b> in the feature space itself.")
             + page.img(fig, "t-SNE"))

    timed("nearest neighbours")
    page.add("neighbors", "Nearest neighbours: feature space against pixel space",
             _p(f"For a few test images, the closest of the {len(idx):,} sampled test images by Euclidean distance "
                "between feature vectors (left) and between pixels (right). Pixel distance finds images that look "
                "alike (same thickness, same place); feature distance finds the same class.")
             + page.img(neighbors_figure(subject, samples=samples, features=(f, y)), "nearest neighbours"))
    timed("done")

    elapsed = time.perf_counter() - t_start
    title = f"cnnlab report: {subject.name}"
    nav = "".join(f'<li><a href="#{i}">{html.escape(t)}</a></li>' for i, t, _ in page.sections)
    body = "".join(f'<section id="{i}"><h2>{html.escape(t)}</h2>{b}</section>' for i, t, b in page.sections)
    source = f"checkpoint <code>{html.escape(os.path.basename(checkpoint))}</code>, " if checkpoint else ""
    epoch = (meta or {}).get("epoch")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>"
            + _p(f"{source}{'trained for ' + str(epoch) + ' epochs, ' if epoch else ''}"
                 f"{len(subject.images):,} test images; made by cnnlab in {elapsed:.0f} s.")
            + f"<nav><ol>{nav}</ol></nav>{body}</body></html>\n")
