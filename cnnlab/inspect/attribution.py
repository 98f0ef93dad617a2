"""Which pixels a network's decision depends on: occlusion, saliency, SmoothGrad, Grad-CAM.

Every function takes a trained model and an image already prepared as the model expects
it (normalised, float): one image ``(C, H, W)`` or a batch ``(N, C, H, W)``, as an
ndarray or a :class:`cnnlab.Tensor`. One image gives maps of shape ``(H, W)``; a batch
gives ``(N, H, W)``, each image explained on its own (``target`` may then be one class
for all, or one per image). ``target=None`` explains the class the model predicts.

- :func:`occlusion` (Zeiler & Fergus, 2014): cover a square of the image with a baseline
  and measure how much the target class's softmax probability drops. Model-agnostic and
  easy to read, but costs one forward pass per patch position (done in batches).
- :func:`saliency` (Simonyan et al., 2014): the gradient of the target class's score
  (its logit, before the softmax) with respect to the input pixels, one backward pass.
- :func:`smoothgrad` (Smilkov et al., 2017): the same gradient averaged over noisy copies
  of the image, which removes most of the speckle of a plain gradient.
- :func:`grad_cam` (Selvaraju et al., 2017): a coarse map from one convolutional layer,
  its feature maps weighted by the spatial mean of the score's gradient.

The model is put in eval mode for the call (dropout off, batch norm on its running
statistics) and its parameters stop requiring gradients, so a backward pass computes
only the input's gradient; both are restored afterwards, and nothing is left attached
to the model (no ``.grad`` on parameters, no hooks).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from ..autograd import Tensor, no_grad
from ..nn import Module
from ._common import check_channels, image_batch, inspecting, positive_int, shape_errors
from .layers import capture, get_layer, layer_names

__all__ = ["OcclusionResult", "SaliencyResult", "GradCAMResult",
           "occlusion", "saliency", "smoothgrad", "grad_cam", "gaussian_blur"]


@dataclass
class OcclusionResult:
    """``heatmap``: (H, W), or (N, H, W) for a batch: the mean drop in the target's
    probability over the patches covering each pixel (positive where hiding the pixel
    hurts the prediction, negative where it helps). ``target``: the class explained (an
    int, or an (N,) array). ``probability``: its probability on the unoccluded image."""
    heatmap: np.ndarray
    target: object
    probability: object


@dataclass
class SaliencyResult:
    """``heatmap``: (H, W) or (N, H, W), the largest absolute gradient over the channels.
    ``gradient``: (C, H, W) or (N, C, H, W), the signed gradient of the target's score
    (logit) with respect to the input. ``target``: the class. ``score``: its logit."""
    heatmap: np.ndarray
    gradient: np.ndarray
    target: object
    score: object


@dataclass
class GradCAMResult:
    """``heatmap``: (H, W) or (N, H, W) in [0, 1], the class activation map upsampled to
    the input's size and divided by its maximum (all zeros where nothing is positive).
    ``cam``: (h, w) or (N, h, w), the map at the layer's own resolution, unscaled.
    ``target``: the class. ``layer``: the layer's name."""
    heatmap: np.ndarray
    cam: np.ndarray
    target: object
    layer: str


# ----- shared plumbing -----

def _prepare(model: Module, image, where: str):
    """The image as a float (N, C, H, W) array in the model's dtype, and whether a single
    (C, H, W) image was given; a wrong channel count is refused before any forward pass."""
    x, single = image_batch(model, image, where)
    check_channels(model, x, where)
    return x, single


def _logits(model: Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    """(N, K) logits, ``batch_size`` images per forward pass, nothing recorded."""
    with no_grad():
        return np.concatenate([model(Tensor(x[i:i + batch_size])).data for i in range(0, len(x), batch_size)])


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _targets(target, logits: np.ndarray, where: str) -> np.ndarray:
    """(N,) class indices: the prediction where ``target`` is None, else ``target`` (one
    int for every image, or one per image), checked against the number of classes."""
    if logits.ndim != 2:
        raise ValueError(f"{where}: expected the model to output class scores of shape (N, classes), "
                         f"got shape {logits.shape}")
    n, k = logits.shape
    if target is None:
        return logits.argmax(axis=1)
    t = np.asarray(target)
    if t.dtype.kind not in "iu" or t.ndim > 1:
        raise ValueError(f"{where}: target must be a class index (int) or one per image, got {target!r}")
    t = np.broadcast_to(t, (n,)) if t.ndim == 0 else t
    if t.shape != (n,):
        raise ValueError(f"{where}: expected one target per image ({n}), got {t.size}")
    bad = t[(t < 0) | (t >= k)]
    if bad.size:
        raise ValueError(f"{where}: target class {int(bad[0])} is out of range: the model has {k} classes "
                         f"(0 to {k - 1})")
    return t.astype(np.int64)


def _unbatch(single: bool, *arrays):
    """Drop the batch axis again when one image was given (ints and floats for scalars)."""
    out = []
    for a in arrays:
        if single:
            a = a[0]
            a = a.item() if isinstance(a, np.generic) else a
        out.append(a)
    return out


# ----- resampling and blurring, shared with synthesis -----

def _lerp_axis(a: np.ndarray, src, dst, axis: int) -> np.ndarray:
    """Linear interpolation along ``axis`` of values given at increasing coordinates
    ``src``, read at coordinates ``dst``; held constant beyond the first and last."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.clip(np.asarray(dst, dtype=np.float64), src[0], src[-1])
    if len(src) == 1:
        return np.repeat(np.take(a, [0], axis=axis), len(dst), axis=axis)
    i = np.clip(np.searchsorted(src, dst, side="right") - 1, 0, len(src) - 2)
    t = (dst - src[i]) / (src[i + 1] - src[i])
    shape = [1] * a.ndim
    shape[axis] = -1
    t = t.reshape(shape)
    return np.take(a, i, axis=axis) * (1 - t) + np.take(a, i + 1, axis=axis) * t


def _upsample(maps: np.ndarray, size) -> np.ndarray:
    """Bilinear resize of (..., h, w) to (..., H, W), cells aligned by their centres (as
    ``align_corners=False``): cell j of h covers input pixels [j H/h, (j + 1) H/h)."""
    (h, w), (H, W) = maps.shape[-2:], size
    src_h, src_w = (np.arange(h) + 0.5) * H / h - 0.5, (np.arange(w) + 0.5) * W / w - 0.5
    out = _lerp_axis(maps, src_h, np.arange(H), axis=maps.ndim - 2)
    return _lerp_axis(out, src_w, np.arange(W), axis=maps.ndim - 1)


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Blur the last two axes of ``x`` (..., H, W) with a Gaussian of standard deviation
    ``sigma`` pixels, as two 1-D passes (the kernel is separable), reaching 3 sigma either
    side; edges are extended by mirroring. ``sigma <= 0`` returns a copy."""
    x = np.asarray(x)
    if sigma <= 0:
        return x.copy()
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(x.dtype if x.dtype.kind == "f" else np.float64)
    for axis in (x.ndim - 2, x.ndim - 1):
        n = x.shape[axis]
        # mirror indices (symmetric), folded as often as needed so any radius works on any size
        idx = np.arange(-radius, n + radius)
        idx = np.abs(idx) % (2 * n)
        idx = np.where(idx >= n, 2 * n - 1 - idx, idx)
        padded = np.take(x, idx, axis=axis)
        x = sum(t * np.take(padded, np.arange(k, k + n), axis=axis) for k, t in enumerate(taps))
    return x


# ----- occlusion -----

def _patch_starts(n: int, patch: int, stride: int) -> np.ndarray:
    """Top (or left) edges of the patches along an axis of n pixels: every ``stride``
    pixels from 0, plus one flush with the far edge when the stride does not land there."""
    starts = list(range(0, n - patch + 1, stride))
    if starts[-1] != n - patch:
        starts.append(n - patch)
    return np.asarray(starts)


def _baseline(x: np.ndarray, baseline, patch: int, where: str) -> np.ndarray:
    """The (C, H, W) image that fills an occluded patch, for one image x (C, H, W)."""
    if isinstance(baseline, str):
        if baseline == "blur":
            return gaussian_blur(x, sigma=patch / 2)
        if baseline == "mean":
            return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape)
        raise ValueError(f"{where}: baseline must be a number, an array, 'blur' or 'mean', got {baseline!r}")
    try:
        return np.broadcast_to(np.asarray(baseline, dtype=x.dtype), x.shape)
    except ValueError:
        raise ValueError(f"{where}: a baseline array must broadcast to the image's shape {x.shape}, "
                         f"got shape {np.shape(baseline)}") from None


def occlusion(model: Module, image, target=None, patch: int = 8, stride: int = 4, baseline=0.0,
              batch_size: int = 64, coarse: bool = False) -> OcclusionResult:
    """Occlusion sensitivity: how much the target class's probability drops when a square
    of the image is hidden.

    A ``patch`` x ``patch`` square slides over the image by ``stride`` pixels (plus one
    last position flush with the bottom and right edges when the stride does not land
    there). For each position the square is replaced by the baseline and the model gives
    the target class a probability p'; the drop is p - p', with p the probability on the
    whole image. Each pixel's value is the mean drop over the squares that cover it, so
    with ``patch > stride`` the map is smoother than the grid. Every pixel is covered by
    at least one square; a pixel no square covered would get 0. All occluded copies go
    through the model ``batch_size`` at a time.

    Args:
        model: a classifier returning (N, classes) scores.
        image: (C, H, W) or a batch (N, C, H, W), prepared as the model expects.
        target: the class to explain (an int, or one per image); default the prediction.
        patch: side of the square, in pixels (at most min(H, W)). Default 8.
        stride: step between squares. Default 4.
        baseline: what replaces the square: a number (in the model's input space: for an
            input normalised with the dataset's mean and std, 0.0 is the mean colour), an
            array broadcastable to (C, H, W), ``'blur'`` (the same pixels from a Gaussian
            blur of the image, sigma = patch / 2: removes detail but keeps the colours) or
            ``'mean'`` (the image's mean per channel). Default 0.0.
        batch_size: occluded images per forward pass. Default 64.
        coarse: evaluate only squares side by side (stride = patch), then upsample the
            grid of drops bilinearly to (H, W), each value placed at its square's centre:
            about (stride / patch)^2 of the work, for a quick look.

    Returns:
        :class:`OcclusionResult` with ``heatmap`` (H, W) (or (N, H, W)), ``target`` and
        ``probability``.

    Example:
        >>> r = occlusion(model, x, patch=4, stride=2)   # x: one normalised (1, 28, 28) digit
        >>> r.heatmap.shape, r.target, round(r.probability, 3)
        ((28, 28), 7, 0.894)
    """
    where = "occlusion"
    x, single = _prepare(model, image, where)
    n, c, h, w = x.shape
    patch = positive_int(patch, "patch", where)
    stride = patch if coarse else positive_int(stride, "stride", where)
    batch_size = positive_int(batch_size, "batch_size", where)
    if patch > min(h, w):
        raise ValueError(f"{where}: patch ({patch}) must be at most the image's height and width, got {h}x{w}")
    with inspecting(model, where, freeze=True):
        with shape_errors(where, x.shape[1:]):
            base_logits = _logits(model, x, batch_size)
        targets = _targets(target, base_logits, where)
        probs = _softmax(base_logits.astype(np.float64))[np.arange(n), targets]
        rows, cols = _patch_starts(h, patch, stride), _patch_starts(w, patch, stride)
        # (P, H) and (P, W) indicators of the rows and columns each square covers
        ii, jj = np.meshgrid(rows, cols, indexing="ij")
        ii, jj = ii.ravel(), jj.ravel()
        in_rows = (np.arange(h) >= ii[:, None]) & (np.arange(h) < ii[:, None] + patch)
        in_cols = (np.arange(w) >= jj[:, None]) & (np.arange(w) < jj[:, None] + patch)
        heat = np.zeros((n, h, w))
        for k in range(n):
            fill = _baseline(x[k], baseline, patch, where)
            drops = np.empty(len(ii))
            for s in range(0, len(ii), batch_size):
                mask = in_rows[s:s + batch_size, None, :, None] & in_cols[s:s + batch_size, None, None, :]
                batch = np.where(mask, fill, x[k])  # (B, C, H, W): square s hidden in copy s
                with no_grad():
                    z = model(Tensor(batch)).data.astype(np.float64)
                drops[s:s + batch_size] = probs[k] - _softmax(z)[:, targets[k]]
            if coarse:
                grid = drops.reshape(len(rows), len(cols))
                centres = (rows + (patch - 1) / 2, cols + (patch - 1) / 2)
                heat[k] = _lerp_axis(_lerp_axis(grid, centres[0], np.arange(h), 0), centres[1], np.arange(w), 1)
            else:
                # sum of drops and number of squares over each pixel, as two small matrix products
                total = (in_rows.T * drops) @ in_cols
                count = in_rows.T.astype(np.float64) @ in_cols
                heat[k] = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    heatmap, t, p = _unbatch(single, heat.astype(x.dtype), targets, probs)
    return OcclusionResult(heatmap=heatmap, target=t, probability=p)


# ----- gradients -----

def _input_gradient(model: Module, x: np.ndarray, target, where: str):
    """d(score of the target)/d(input) for every image of x (N, C, H, W), one backward
    pass: (gradient (N, C, H, W), targets (N,), scores (N,)). Expects ``inspecting(model, freeze=True)``."""
    xt = Tensor(x.copy(), requires_grad=True)
    with shape_errors(where, x.shape[1:]):
        logits = model(xt)
    targets = _targets(target, logits.data, where)
    # the images do not interact in eval mode, so one backward of the summed scores
    # gives each image the gradient of its own score
    picked = logits[np.arange(len(x)), targets]
    picked.sum().backward()
    return xt.grad, targets, picked.data.copy()


def saliency(model: Module, image, target=None) -> SaliencyResult:
    """Gradient saliency (Simonyan, Vedaldi & Zisserman, 2014): how much a small change
    of each pixel changes the target class's score,

        heatmap[i, j] = max_c | d score_target / d x[c, i, j] |,

    with the score the logit (before the softmax, whose gradient would also depend on the
    other classes).

    Args:
        model: a classifier returning (N, classes) scores.
        image: (C, H, W) or a batch (N, C, H, W), prepared as the model expects.
        target: the class (an int, or one per image); default the prediction.

    Returns:
        :class:`SaliencyResult`: ``heatmap`` (H, W), ``gradient`` (C, H, W), ``target``,
        ``score`` (with a leading N for a batch).
    """
    where = "saliency"
    x, single = _prepare(model, image, where)
    with inspecting(model, where, freeze=True):
        grad, targets, scores = _input_gradient(model, x, target, where)
    heat, grad, t, s = _unbatch(single, np.abs(grad).max(axis=1), grad, targets, scores)
    return SaliencyResult(heatmap=heat, gradient=grad, target=t, score=s)


def smoothgrad(model: Module, image, target=None, samples: int = 25, noise: float = 0.15, seed: int = 0,
               batch_size: int = 64) -> SaliencyResult:
    """SmoothGrad (Smilkov et al., 2017): the saliency gradient averaged over ``samples``
    noisy copies of the image,

        gradient = 1/n sum_i d score_target / dx (x + e_i),  e_i ~ N(0, sigma^2),
        sigma = noise * (max(x) - min(x)),

    and ``heatmap`` the largest absolute averaged gradient over the channels. The target
    is fixed on the clean image, so every copy explains the same class. With
    ``samples=1, noise=0`` this is :func:`saliency`. The images of a batch share one
    noise pattern (scaled to each one's range), so a batch gives the same maps as its
    images one at a time.

    Args:
        model, image, target: as in :func:`saliency`.
        samples: noisy copies per image. Default 25.
        noise: noise level as a fraction of the image's value range. Default 0.15.
        seed: of the noise, for reproducible maps. Default 0.
        batch_size: copies per forward and backward pass. Default 64.

    Returns:
        :class:`SaliencyResult` (``score``: the target's logit on the clean image).
    """
    where = "smoothgrad"
    x, single = _prepare(model, image, where)
    samples = positive_int(samples, "samples", where)
    batch_size = positive_int(batch_size, "batch_size", where)
    if not isinstance(noise, numbers.Real) or noise < 0:
        raise ValueError(f"{where}: noise must be a non-negative number, got {noise!r}")
    rng = np.random.default_rng(seed)
    with inspecting(model, where, freeze=True):
        with shape_errors(where, x.shape[1:]):
            logits = _logits(model, x, batch_size)
        targets = _targets(target, logits, where)
        scores = logits[np.arange(len(x)), targets]
        # one noise pattern, scaled to each image's range, so that a batch gives the same
        # maps as its images one at a time
        pattern = rng.standard_normal((samples,) + x.shape[1:])
        grads = np.zeros(x.shape, dtype=np.float64)
        for k in range(len(x)):
            sigma = noise * float(x[k].max() - x[k].min())
            noisy = x[k] + (sigma * pattern).astype(x.dtype)
            for s in range(0, samples, batch_size):
                g, _, _ = _input_gradient(model, noisy[s:s + batch_size], int(targets[k]), where)
                grads[k] += g.sum(axis=0)
        grads = (grads / samples).astype(x.dtype)
    heat, grads, t, s = _unbatch(single, np.abs(grads).max(axis=1), grads, targets, scores)
    return SaliencyResult(heatmap=heat, gradient=grads, target=t, score=s)


def grad_cam(model: Module, image, layer: str, target=None) -> GradCAMResult:
    """Grad-CAM (Selvaraju et al., 2017): where, in one convolutional layer's feature
    maps A^k (k = 1..K, each h x w), the evidence for the target class lies,

        alpha_k = mean over (i, j) of d score_target / d A^k[i, j]
        cam     = ReLU(sum_k alpha_k A^k)                               (h, w)

    then upsampled bilinearly to the input's (H, W) and divided by its maximum. A late
    layer gives coarse but class-specific maps; an early one sharper but less selective
    ones. Use a layer after its ReLU (in LeNet-5, "4" rather than the convolution "3"):
    negative pre-activations weighted by positive alphas blank out the map. The
    upsampling stretches the h x w grid over the whole image, as in the paper; after
    unpadded convolutions the true receptive-field centres sit a little further in, so
    near the borders the map can be off by a few pixels. If the layer runs more than once
    in a forward pass, its first call is used.

    Args:
        model: a classifier returning (N, classes) scores.
        image: (C, H, W) or a batch (N, C, H, W), prepared as the model expects.
        layer: dotted name of a layer with a 4-D output (N, K, h, w), as listed by
            :func:`cnnlab.inspect.layers.layer_names` (e.g. "3" in a Sequential).
        target: the class (an int, or one per image); default the prediction.

    Returns:
        :class:`GradCAMResult`: ``heatmap`` (H, W) in [0, 1], ``cam`` (h, w), ``target``,
        ``layer`` (with a leading N for a batch).
    """
    where = "grad_cam"
    x, single = _prepare(model, image, where)
    if not isinstance(layer, str):
        raise TypeError(f"{where}: layer must be a layer's name (str), got {type(layer).__name__}")
    get_layer(model, layer)  # a ValueError listing the valid names
    with inspecting(model, where, freeze=True):
        # the input requires a gradient only so that the pass is recorded on the tape
        xt = Tensor(x.copy(), requires_grad=True)
        with shape_errors(where, x.shape[1:]):
            caught = capture(model, xt, [layer], grad=True)
        if layer not in caught:
            raise ValueError(f"{where}: layer {layer!r} did not run (or did not output a Tensor) in the "
                             f"forward pass; choose a layer on the path from input to output")
        acts, logits = caught[layer], caught["output"]
        if acts.ndim != 4:
            raise ValueError(f"{where}: layer {layer!r} ({type(get_layer(model, layer)).__name__}) outputs shape "
                             f"{acts.shape}; Grad-CAM needs a 4-D (N, C, H, W) feature map, e.g. one of the "
                             f"layers {', '.join(_spatial_layers(model, x[:1]))}")
        targets = _targets(target, logits.data, where)
        logits[np.arange(len(x)), targets].sum().backward()
        a = acts.data.astype(np.float64)
        g = acts.grad.astype(np.float64) if acts.grad is not None else np.zeros_like(a)
    alpha = g.mean(axis=(2, 3), keepdims=True)
    cam = np.maximum((alpha * a).sum(axis=1), 0.0)  # (N, h, w)
    up = np.maximum(_upsample(cam, x.shape[2:]), 0.0)
    peak = up.max(axis=(1, 2), keepdims=True)
    heat = np.divide(up, peak, out=np.zeros_like(up), where=peak > 0)
    heat, cam, t = _unbatch(single, heat.astype(x.dtype), cam.astype(x.dtype), targets)
    return GradCAMResult(heatmap=heat, cam=cam, target=t, layer=layer)


def _spatial_layers(model: Module, x: np.ndarray) -> list:
    """Names of the layers whose output is 4-D for this input (for error messages)."""
    caught = capture(model, Tensor(x), layer_names(model))
    return [name for name, out in caught.items() if name != "output" and out.ndim == 4]
