"""Images synthesised to excite a neuron: activation maximization.

Start from a faint random image and climb the gradient of one unit's activation with
respect to the *input* (the weights stay fixed). Left alone, the ascent finds
high-frequency patterns no natural image has; a few regularisers keep the result
readable on small inputs (Erhan et al., 2009; Simonyan et al., 2014; Yosinski et al., 2015):

- L2 decay pulls every pixel back towards the dataset's mean colour, so only the pixels
  that matter move away from it;
- total variation (the sum of absolute differences between neighbouring pixels)
  penalises speckle and favours flat regions with sharp strokes;
- jitter shifts the image by a random few pixels at each step, so the pattern must work
  wherever it lands instead of exploiting the exact pixel grid;
- a light Gaussian blur every few steps removes what high frequencies remain;
- clipping keeps every pixel inside the range real images have (0 to 1 before the
  normalisation the model was trained with).

The optimisation runs in display space u in [0, 1]; the model sees (u - mean) / std.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from ..autograd import Tensor
from ..nn import Module
from ._common import check_channels, check_model, inspecting, model_dtype, shape_errors
from .attribution import gaussian_blur
from .layers import capture, get_layer

__all__ = ["SynthesisResult", "maximize_activation"]


@dataclass
class SynthesisResult:
    """``image``: (C, H, W) float32 in the model's input space (normalised), ready for the
    model. ``display``: the same image in [0, 1] (channels first), for plotting.
    ``history``: (steps,) the objective (the unit's activation, without the regularisers)
    at each step, on the jittered image. ``start_value`` / ``final_value``: the objective on
    the random starting image and on the result. ``objective``: what was maximised, in words."""
    image: np.ndarray
    display: np.ndarray
    history: np.ndarray
    start_value: float
    final_value: float
    objective: str


def _per_channel(value, c, name, default):
    v = np.asarray(default if value is None else value, dtype=np.float64).reshape(-1)
    if v.size not in (1, c):
        raise ValueError(f"maximize_activation: {name} must be a number or {c} numbers (one per channel), "
                         f"got {v.size}")
    return np.broadcast_to(v, (c,)).reshape(c, 1, 1).copy()


def _total_variation_grad(u: np.ndarray) -> np.ndarray:
    """Gradient of sum |u[i+1, j] - u[i, j]| + |u[i, j+1] - u[i, j]| over (C, H, W)."""
    g = np.zeros_like(u)
    dv = np.sign(np.diff(u, axis=1))
    dh = np.sign(np.diff(u, axis=2))
    g[:, 1:, :] += dv
    g[:, :-1, :] -= dv
    g[:, :, 1:] += dh
    g[:, :, :-1] -= dh
    return g


def maximize_activation(model: Module, layer: str = None, channel: int = None, target_class: int = None,
                        shape=None, steps: int = 200, lr: float = 0.05, l2: float = 0.03, tv: float = 0.2,
                        jitter: int = 1, blur_every: int = 4, blur_sigma: float = 0.6, seed: int = 0,
                        mean=None, std=None, background=None) -> SynthesisResult:
    """Gradient ascent on the input to maximise one unit of the network.

    The objective is either the mean activation of ``channel`` in ``layer``'s output
    (over all positions of a (N, K, h, w) feature map; the unit itself for a (N, K)
    output; the mean of the whole output if ``channel`` is None), or, with
    ``target_class``, the class's score (logit, before the softmax: maximising the
    probability could also be done by lowering the other classes).

    Each step, on the image u in display space [0, 1] (the model sees (u - mean) / std):

        shift u by a random (dy, dx), |dy|, |dx| <= jitter (rolling around the edges)
        g  = d objective / du at the shifted image, shifted back
        u += lr * g / rms(g)                     (normalised ascent: the same step size for any unit)
        u -= lr * tv * sign-gradient of the total variation of u
        u  = b + (1 - l2) * (u - b)              (L2 decay towards the background colour b)
        u  = blur(u, blur_sigma) every blur_every steps
        u  = clip(u, 0, 1)

    The starting image is the background colour plus faint Gaussian noise (std 0.01).
    Where the gradient is zero (a unit behind a ReLU that nothing excites yet), the step
    instead adds stronger noise (std 0.1) and tries again.

    Args:
        model: any cnnlab model.
        layer: dotted name of the layer to excite (see
            :func:`cnnlab.inspect.layers.layer_names`); None with ``target_class``.
        channel: which channel (feature map or unit) of that layer; None for all.
        target_class: maximise this class's logit instead of a layer's channel.
        shape: (C, H, W) of the model's input. Required.
        steps: ascent steps. Default 200.
        lr: step size, in display units per pixel (root mean square). Default 0.05.
        l2: fraction of each pixel's distance to the background removed per step. Default
            0.03. At equilibrium a pixel sits about lr / l2 * g / rms(g) from the
            background, so lr / l2 sets the contrast and l2 how fast unused pixels fade.
        tv: size of the total-variation step, relative to the objective's. Default 0.2.
        jitter: largest random shift per step, in pixels (0: none). Default 1.
        blur_every: blur every this many steps (0: never). Default 4.
        blur_sigma: standard deviation of that blur, in pixels. Default 0.6.
        seed: of the starting noise and the jitter. Default 0.
        mean, std: the normalisation the model was trained with (numbers or one per
            channel, on the 0-1 scale); default 0 and 1 (the model takes [0, 1] images).
        background: the colour (on the 0-1 scale, a number or one per channel) the image
            starts from and the L2 decay pulls towards; default ``mean`` (0.5 when not
            given). For data drawn on a plain background pass its colour (0 for MNIST):
            the decay then clears the background instead of leaving texture on it.

    The defaults were chosen by eye on a LeNet-5 trained on MNIST (28x28; the class images
    show strokes and are classified as their class with probability 0.8 to 1) and on one
    trained on CIFAR-10 (32x32 colour): stronger blur or decay gives faint, blurred
    images; weaker, speckle and the stripes a small network's pooling grid responds to.

    Returns:
        :class:`SynthesisResult`.

    Example:
        >>> r = maximize_activation(model, target_class=3, shape=(1, 28, 28), mean=0.1307, std=0.3081)
        >>> r.final_value > r.start_value
        True
    """
    where = "maximize_activation"
    check_model(model, where)
    if shape is None or len(tuple(shape)) != 3:
        raise ValueError(f"{where}: shape must be the model's input shape (C, H, W), got {shape!r}")
    c, h, w = (int(v) for v in shape)
    if (layer is None) == (target_class is None):
        raise ValueError(f"{where}: give either layer (and channel) or target_class, got "
                         f"layer={layer!r}, target_class={target_class!r}")
    if target_class is not None and channel is not None:
        raise ValueError(f"{where}: channel goes with layer, not with target_class (got channel={channel!r})")
    for name, value in (("steps", steps), ("jitter", jitter), ("blur_every", blur_every)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < (name == "steps"):
            raise ValueError(f"{where}: {name} must be a {'positive' if name == 'steps' else 'non-negative'} "
                             f"int, got {value!r}")
    if layer is not None:
        get_layer(model, layer)  # a ValueError listing the valid names
    dtype = model_dtype(model)
    check_channels(model, np.zeros((1, c, h, w), dtype), where)
    mu = _per_channel(mean, c, "mean", 0.0)
    sd = _per_channel(std, c, "std", 1.0)
    if np.any(sd <= 0):
        raise ValueError(f"{where}: std must be positive, got {std!r}")
    if background is not None:
        centre = _per_channel(background, c, "background", None)
    else:
        centre = mu if mean is not None else np.full_like(mu, 0.5)
    if np.any(centre < 0) or np.any(centre > 1):
        raise ValueError(f"{where}: background must be in [0, 1] (display space), got {background!r}")
    rng = np.random.default_rng(seed)
    observed = "output" if layer is None else layer

    def objective(u, with_grad):
        """The objective at display image u (C, H, W), and its gradient w.r.t. u."""
        x = Tensor(((u - mu) / sd)[None].astype(dtype), requires_grad=with_grad)
        caught = capture(model, x, [] if layer is None else [layer], grad=with_grad)
        if observed not in caught:
            raise ValueError(f"{where}: layer {layer!r} did not run in the forward pass")
        out = caught[observed]
        if layer is None:
            k = out.shape[1] if out.ndim == 2 else None
            if k is None or isinstance(target_class, bool) or not (
                    isinstance(target_class, numbers.Integral) and 0 <= target_class < k):
                raise ValueError(f"{where}: target_class {target_class!r} is out of range: the model has "
                                 f"{k} classes (0 to {None if k is None else k - 1})")
            unit = out[0, int(target_class)]
        elif channel is None:
            unit = out.mean()
        else:
            k = out.shape[1] if out.ndim >= 2 else 0
            if not (isinstance(channel, numbers.Integral) and not isinstance(channel, bool) and 0 <= channel < k):
                raise ValueError(f"{where}: channel {channel!r} is out of range: layer {layer!r} outputs "
                                 f"{k} channels (0 to {k - 1}), shape {tuple(out.shape[1:])}")
            unit = out[0, int(channel)]
            unit = unit.mean() if unit.ndim else unit
        if not with_grad:
            return float(unit.data), None
        unit.backward()
        return float(unit.data), x.grad[0].astype(np.float64) / sd

    with inspecting(model, where, freeze=True):
        u = np.clip(centre + 0.01 * rng.standard_normal((c, h, w)), 0.0, 1.0)
        with shape_errors(where, (c, h, w)):
            start, _ = objective(u, False)
        history = np.empty(steps)
        for step in range(steps):
            dy, dx = rng.integers(-jitter, jitter + 1, size=2) if jitter else (0, 0)
            value, g = objective(np.roll(u, (dy, dx), axis=(1, 2)), True)
            g = np.roll(g, (-dy, -dx), axis=(1, 2))
            history[step] = value
            if not np.any(g):
                # a silent unit (a ReLU off everywhere) has no gradient to follow: try
                # again from a noisier image
                u = np.clip(u + 0.1 * rng.standard_normal(u.shape), 0.0, 1.0)
                continue
            u = u + lr * g / np.sqrt(np.mean(g * g))
            if tv:
                u = u - lr * tv * _total_variation_grad(u)
            u = centre + (1.0 - l2) * (u - centre)
            if blur_every and (step + 1) % blur_every == 0:
                u = gaussian_blur(u, blur_sigma)
            u = np.clip(u, 0.0, 1.0)
        final, _ = objective(u, False)
    what = f"logit of class {target_class}" if layer is None else (
        f"mean activation of layer {layer!r}" + ("" if channel is None else f", channel {channel}"))
    return SynthesisResult(image=((u - mu) / sd).astype(np.float32), display=u.astype(np.float32),
                           history=history, start_value=start, final_value=final, objective=what)
