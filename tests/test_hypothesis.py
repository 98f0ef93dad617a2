"""Property-based parity: hypothesis draws random valid conv2d and pooling configurations
and each one is compared with PyTorch through check_op (values and every gradient).

derandomize=True makes the examples a fixed function of the test, so CI is deterministic;
database=None keeps hypothesis from writing an example database into the repository."""
import math

import numpy as np
import pytest
import torch.nn.functional as TF
from hypothesis import assume, given, settings, strategies as st

import cnnlab.functional as F
from conftest import check_op, distinct, tf_same_pads, torch_pad

SETTINGS = dict(deadline=None, derandomize=True, database=None)
MODES = ["zeros", "reflect", "replicate", "circular", "symmetric"]
DTYPES = [np.float64, np.float32]


# ----- conv2d -----
@st.composite
def conv_configs(draw):
    groups = draw(st.integers(1, 3))
    c, f = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.one_of(st.sampled_from(["same", "valid"]), st.integers(0, 3),
                             st.tuples(st.integers(0, 3), st.integers(0, 3))))
    mode = draw(st.sampled_from(MODES))
    hw = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    if padding == "same":
        pads = tf_same_pads(hw, kernel, stride, dilation)
    elif padding == "valid":
        pads = (0, 0, 0, 0)
    else:
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        pads = (ph, ph, pw, pw)
    # only what cnnlab and torch accept: each mode copies at most so far into the image,
    # and the dilated kernel fits the padded input
    if mode in ("reflect", "circular", "symmetric"):
        limit = (lambda n: n - 1) if mode == "reflect" else (lambda n: n)
        assume(max(pads[:2]) <= limit(hw[0]) and max(pads[2:]) <= limit(hw[1]))
    span = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    assume(hw[0] + pads[0] + pads[1] >= span[0] and hw[1] + pads[2] + pads[3] >= span[1])
    out_hw = [(n + lo + hi - s_) // st_ + 1 for n, lo, hi, s_, st_ in
              ((hw[0], pads[0], pads[1], span[0], stride[0]), (hw[1], pads[2], pads[3], span[1], stride[1]))]
    return dict(n=draw(st.integers(1, 2)), c=c, f=f, hw=hw, kernel=kernel, stride=stride, dilation=dilation,
                padding=padding, pads=pads, groups=groups, mode=mode, out_hw=tuple(out_hw),
                bias=draw(st.sampled_from([None, "tied", "untied"])), unbatched=draw(st.booleans()),
                dtype=draw(st.sampled_from(DTYPES)), seed=draw(st.integers(0, 2 ** 16)))


def _torch_conv(cfg):
    stride, dilation, groups, padding, mode = cfg["stride"], cfg["dilation"], cfg["groups"], cfg["padding"], cfg["mode"]

    def run(x, w, b=None):
        tied = None if b is None or b.ndim == 3 else b
        if mode == "zeros" and padding != "same":
            out = TF.conv2d(x, w, tied, stride, padding, dilation, groups)     # torch's own padding
        elif mode == "zeros" and stride == (1, 1):
            out = TF.conv2d(x, w, tied, stride, "same", dilation, groups)
        else:
            out = TF.conv2d(torch_pad(x, cfg["pads"], mode), w, tied, stride, 0, dilation, groups)
        return out if b is None or b.ndim == 1 else out + b
    return run


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@settings(max_examples=1500, **SETTINGS)
@given(conv_configs())
def test_conv2d_matches_torch(cfg):
    rng = np.random.default_rng(cfg["seed"])
    x_shape = (cfg["c"],) + cfg["hw"] if cfg["unbatched"] else (cfg["n"], cfg["c"]) + cfg["hw"]
    arrays = [rng.standard_normal(x_shape), rng.standard_normal((cfg["f"], cfg["c"] // cfg["groups"]) + cfg["kernel"])]
    if cfg["bias"] == "tied":
        arrays.append(rng.standard_normal(cfg["f"]))
    elif cfg["bias"] == "untied":
        arrays.append(rng.standard_normal((cfg["f"],) + cfg["out_hw"]))
    kw = {k: cfg[k] for k in ("stride", "padding", "dilation", "groups")}
    out, _ = check_op("conv2d (hypothesis)",
                      lambda x, w, b=None: F.conv2d(x, w, b, padding_mode=cfg["mode"], **kw),
                      _torch_conv(cfg), arrays, cfg["dtype"], seed=cfg["seed"])
    assert out[0].shape[-2:] == cfg["out_hw"]
    if cfg["padding"] == "same":
        assert out[0].shape[-2:] == tuple(math.ceil(n / s) for n, s in zip(cfg["hw"], cfg["stride"]))


# ----- pooling -----
def _pool_out(n, k, s, p, d, ceil_mode):
    """PyTorch's pooling_output_shape (the test's own copy, not cnnlab's)."""
    num = n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = math.floor(num / s) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


@st.composite
def pool_configs(draw):
    kind = draw(st.sampled_from(["max", "avg"]))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if kind == "max" else (1, 1)
    ceil_mode = draw(st.booleans())
    hw = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    s = kernel if stride is None else stride
    out_hw = tuple(_pool_out(n, k, s_, p, d, ceil_mode) for n, k, s_, p, d in zip(hw, kernel, s, padding, dilation))
    assume(min(out_hw) >= 1)
    # every window must hold at least one input pixel (torch leaves all-padding windows undefined)
    for n, k, s_, p, d, o in zip(hw, kernel, s, padding, dilation, out_hw):
        assume(all(any(0 <= i * s_ - p + d * t < n for t in range(k)) for i in range(o)))
    return dict(kind=kind, kernel=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode,
                count_include_pad=draw(st.booleans()), hw=hw, out_hw=out_hw,
                shape=draw(st.sampled_from([(1, 1), (2, 3), (3,)])), dtype=draw(st.sampled_from(DTYPES)),
                seed=draw(st.integers(0, 2 ** 16)))


@settings(max_examples=1500, **SETTINGS)
@given(pool_configs())
def test_pool2d_matches_torch(cfg):
    rng = np.random.default_rng(cfg["seed"])
    shape = cfg["shape"] + cfg["hw"]
    if cfg["kind"] == "max":
        kw = dict(kernel_size=cfg["kernel"], stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"],
                  ceil_mode=cfg["ceil_mode"], return_indices=True)
        out, _ = check_op("max_pool2d (hypothesis)", lambda x: F.max_pool2d(x, **kw),
                          lambda x: TF.max_pool2d(x, **kw), [distinct(rng, *shape)], cfg["dtype"], seed=cfg["seed"])
    else:
        kw = dict(kernel_size=cfg["kernel"], stride=cfg["stride"], padding=cfg["padding"], ceil_mode=cfg["ceil_mode"],
                  count_include_pad=cfg["count_include_pad"])
        out, _ = check_op("avg_pool2d (hypothesis)", lambda x: F.avg_pool2d(x, **kw),
                          lambda x: TF.avg_pool2d(x, **kw), [rng.standard_normal(shape)], cfg["dtype"],
                          seed=cfg["seed"])
    assert out[0].shape[-2:] == cfg["out_hw"]


# ----- adaptive pooling -----
@settings(max_examples=300, **SETTINGS)
@given(hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
       size=st.tuples(st.one_of(st.none(), st.integers(1, 10)), st.one_of(st.none(), st.integers(1, 10))),
       kind=st.sampled_from(["avg", "max"]), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2 ** 16))
def test_adaptive_pool2d_matches_torch(hw, size, kind, dtype, seed):
    x = distinct(np.random.default_rng(seed), 2, 2, *hw)
    op = f"adaptive_{kind}_pool2d"
    check_op(op + " (hypothesis)", lambda x: getattr(F, op)(x, size), lambda x: getattr(TF, op)(x, size), [x], dtype,
             seed=seed)

