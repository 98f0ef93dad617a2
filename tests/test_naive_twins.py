"""Every fast kernel against a slow, obviously-correct twin written with explicit loops
(cs231n's fast_layers / layers pairing). The twins use only NumPy (np.pad for the
padded input) and never call cnnlab."""
import numpy as np
import pytest

import cnnlab
import cnnlab.functional as F
from cnnlab.kernels import add_windows, pad2d, pad2d_backward, windows
from conftest import rel_error, tf_same_pads

NP_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap", "symmetric": "symmetric"}
TOL = 1e-12


def close(ours, naive):
    assert np.shape(ours) == np.shape(naive)
    assert rel_error(ours, naive) <= TOL, rel_error(ours, naive)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _pads(padding, hw, kernel, stride, dilation):
    if padding == "same":
        return tf_same_pads(hw, kernel, stride, dilation)
    ph, pw = _pair(padding)
    return (ph, ph, pw, pw)


# ----- naive padding and its adjoint -----
def naive_pad(x, pads, mode, value=0.0):
    """Pad the last two axes: np.pad does it."""
    t, b, l, r = pads
    width = [(0, 0)] * (x.ndim - 2) + [(t, b), (l, r)]
    if mode == "zeros":
        return np.pad(x, width, mode="constant", constant_values=value)
    return np.pad(x, width, mode=NP_MODE[mode])


def naive_pad_adjoint(g, in_hw, pads, mode):
    """Each padded pixel's gradient goes to the input pixel it was copied from, found by
    padding a grid of pixel numbers (zeros mode: -1, copied from nowhere)."""
    h, w = in_hw
    ids = np.arange(h * w).reshape(h, w)
    t, b, l, r = pads
    if mode == "zeros":
        src = np.pad(ids, ((t, b), (l, r)), mode="constant", constant_values=-1)
    else:
        src = np.pad(ids, ((t, b), (l, r)), mode=NP_MODE[mode])
    dx = np.zeros(g.shape[:-2] + (h * w,), g.dtype)
    for p in range(src.shape[0]):
        for q in range(src.shape[1]):
            if src[p, q] >= 0:
                dx[..., src[p, q]] += g[..., p, q]
    return dx.reshape(g.shape[:-2] + (h, w))


# ----- naive convolution -----
def naive_conv_forward(x, w, b, stride, pads, dilation, groups, mode):
    n_, c, h, wd = x.shape
    f_, cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    xp = naive_pad(x, pads, mode)
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    fg = f_ // groups
    out = np.zeros((n_, f_, ho, wo))
    for n in range(n_):
        for f in range(f_):
            g = f // fg
            for i in range(ho):
                for j in range(wo):
                    total = 0.0
                    for cc in range(cg):
                        for u in range(kh):
                            for v in range(kw):
                                total += w[f, cc, u, v] * xp[n, g * cg + cc, i * sh + u * dh, j * sw + v * dw]
                    out[n, f, i, j] = total + (0.0 if b is None else (b[f] if b.ndim == 1 else b[f, i, j]))
    return out


def naive_conv_backward(dout, x, w, stride, pads, dilation, groups, mode):
    n_, c, h, wd = x.shape
    f_, cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    xp = naive_pad(x, pads, mode)
    dxp, dw_ = np.zeros_like(xp), np.zeros_like(w)
    fg = f_ // groups
    _, _, ho, wo = dout.shape
    for n in range(n_):
        for f in range(f_):
            g = f // fg
            for i in range(ho):
                for j in range(wo):
                    for cc in range(cg):
                        for u in range(kh):
                            for v in range(kw):
                                r, s = i * sh + u * dh, j * sw + v * dw
                                dxp[n, g * cg + cc, r, s] += w[f, cc, u, v] * dout[n, f, i, j]
                                dw_[f, cc, u, v] += xp[n, g * cg + cc, r, s] * dout[n, f, i, j]
    return naive_pad_adjoint(dxp, (h, wd), pads, mode), dw_, dout.sum(axis=(0, 2, 3)), dout.sum(axis=0)


CONV_CONFIGS = [
    dict(xs=(2, 3, 5, 6), ws=(4, 3, 3, 2), stride=1, padding=1, dilation=1, groups=1, mode="zeros"),
    dict(xs=(1, 4, 7, 6), ws=(4, 2, 3, 3), stride=(2, 1), padding=(2, 1), dilation=(1, 2), groups=2, mode="reflect"),
    dict(xs=(2, 3, 6, 5), ws=(3, 1, 2, 3), stride=2, padding="same", dilation=1, groups=3, mode="circular"),
    dict(xs=(2, 2, 5, 5), ws=(2, 2, 3, 3), stride=(1, 2), padding=(1, 2), dilation=2, groups=1, mode="symmetric"),
    dict(xs=(1, 2, 6, 7), ws=(4, 2, 2, 2), stride=3, padding="same", dilation=1, groups=1, mode="replicate"),
]


@pytest.mark.parametrize("bias", ["tied", "untied", None])
@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=[c["mode"] for c in CONV_CONFIGS])
def test_conv2d_against_loops(cfg, bias):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(cfg["xs"]), rng.standard_normal(cfg["ws"])
    stride, dilation = _pair(cfg["stride"]), _pair(cfg["dilation"])
    pads = _pads(cfg["padding"], cfg["xs"][2:], cfg["ws"][2:], stride, dilation)
    ho, wo = F.conv_output_size(cfg["xs"][2:], cfg["ws"][2:], stride, cfg["padding"], dilation)
    b = {None: None, "tied": rng.standard_normal(cfg["ws"][0]),
         "untied": rng.standard_normal((cfg["ws"][0], ho, wo))}[bias]
    want = naive_conv_forward(x, w, b, stride, pads, dilation, cfg["groups"], cfg["mode"])

    xt, wt = cnnlab.Tensor(x, requires_grad=True), cnnlab.Tensor(w, requires_grad=True)
    bt = None if b is None else cnnlab.Tensor(b, requires_grad=True)
    out = F.conv2d(xt, wt, bt, stride, cfg["padding"], dilation, cfg["groups"], padding_mode=cfg["mode"])
    close(out.data, want)
    dout = rng.standard_normal(want.shape)
    out.backward(dout)
    dx, dw, db_tied, db_untied = naive_conv_backward(dout, x, w, stride, pads, dilation, cfg["groups"], cfg["mode"])
    close(xt.grad, dx)
    close(wt.grad, dw)
    if b is not None:
        close(bt.grad, db_tied if bias == "tied" else db_untied)


# ----- im2col / col2im -----
def naive_unfold(x, kernel, stride, dilation, padding):
    n_, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = kernel, stride, dilation, padding
    xp = naive_pad(x, (ph, ph, pw, pw), "zeros")
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cols = np.zeros((n_, c * kh * kw, ho * wo))
    for n in range(n_):
        for cc in range(c):
            for u in range(kh):
                for v in range(kw):
                    for i in range(ho):
                        for j in range(wo):
                            cols[n, (cc * kh + u) * kw + v, i * wo + j] = xp[n, cc, i * sh + u * dh, j * sw + v * dw]
    return cols


def naive_fold(cols, out_hw, kernel, stride, dilation, padding):
    """col2im: every column entry is added to the pixel its window position covers;
    entries that fall on the padding are dropped."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = kernel, stride, dilation, padding
    h, w = out_hw
    n_, ckk, _ = cols.shape
    c = ckk // (kh * kw)
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out = np.zeros((n_, c, h, w))
    for n in range(n_):
        for cc in range(c):
            for u in range(kh):
                for v in range(kw):
                    for i in range(ho):
                        for j in range(wo):
                            r, s = i * sh - ph + u * dh, j * sw - pw + v * dw
                            if 0 <= r < h and 0 <= s < w:
                                out[n, cc, r, s] += cols[n, (cc * kh + u) * kw + v, i * wo + j]
    return out


FOLD_CONFIGS = [((2, 2, 5, 6), (3, 3), (1, 1), (1, 1), (1, 1)), ((1, 3, 7, 6), (2, 3), (2, 1), (1, 2), (1, 0)),
                ((2, 1, 8, 7), (3, 2), (2, 3), (2, 1), (2, 1)), ((1, 2, 6, 6), (2, 2), (3, 3), (1, 1), (0, 0))]


@pytest.mark.parametrize("xs,kernel,stride,dilation,padding", FOLD_CONFIGS)
def test_unfold_and_fold_against_loops(xs, kernel, stride, dilation, padding):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(xs)
    kw = dict(kernel_size=kernel, stride=stride, dilation=dilation, padding=padding)
    close(F.unfold(cnnlab.Tensor(x), **kw).data, naive_unfold(x, kernel, stride, dilation, padding))
    cols_shape = naive_unfold(x, kernel, stride, dilation, padding).shape
    cols = rng.standard_normal(cols_shape)
    close(F.fold(cnnlab.Tensor(cols), xs[2:], **kw).data, naive_fold(cols, xs[2:], kernel, stride, dilation, padding))
    # the backward passes are each other: unfold's gradient is fold, and back
    xt = cnnlab.Tensor(x, requires_grad=True)
    F.unfold(xt, **kw).backward(cols)
    close(xt.grad, naive_fold(cols, xs[2:], kernel, stride, dilation, padding))
    ct = cnnlab.Tensor(cols, requires_grad=True)
    F.fold(ct, xs[2:], **kw).backward(x)
    close(ct.grad, naive_unfold(x, kernel, stride, dilation, padding))


@pytest.mark.parametrize("axes", [(2, 3), (1, 2)])
def test_windows_and_add_windows_against_loops(axes):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 7, 8, 3)) if axes == (1, 2) else rng.standard_normal((2, 3, 7, 8))
    kernel, stride, dilation = (3, 2), (2, 3), (2, 1)
    win = windows(x, kernel, stride, dilation, axes=axes)
    nchw = x if axes == (2, 3) else x.transpose(0, 3, 1, 2)
    win_nchw = win if axes == (2, 3) else win.transpose(0, 3, 1, 2, 4, 5)
    ho, wo = win_nchw.shape[2:4]
    (sh, sw), (dh, dw) = stride, dilation
    for i in range(ho):
        for j in range(wo):
            for u in range(kernel[0]):
                for v in range(kernel[1]):
                    np.testing.assert_array_equal(win_nchw[:, :, i, j, u, v], nchw[:, :, i * sh + u * dh, j * sw + v * dw])
    dwin = rng.standard_normal(win.shape)
    got = add_windows(np.zeros_like(x), dwin, stride, dilation, axes=axes)
    want = np.zeros_like(nchw)
    dwin_nchw = dwin if axes == (2, 3) else dwin.transpose(0, 3, 1, 2, 4, 5)
    for i in range(ho):
        for j in range(wo):
            for u in range(kernel[0]):
                for v in range(kernel[1]):
                    want[:, :, i * sh + u * dh, j * sw + v * dw] += dwin_nchw[:, :, i, j, u, v]
    close(got if axes == (2, 3) else got.transpose(0, 3, 1, 2), want)


# ----- padding kernels -----
PAD_CONFIGS = [(0, 0, 0, 0), (1, 2, 3, 0), (2, 2, 2, 2), (0, 3, 1, 4), (3, 1, 0, 2)]


@pytest.mark.parametrize("pads", PAD_CONFIGS)
@pytest.mark.parametrize("mode", list(NP_MODE))
def test_pad2d_against_numpy_and_loop_adjoint(mode, pads):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 5))  # every pad is < 4, so reflect applies too
    got = pad2d(x, pads, mode)
    close(got, naive_pad(x, pads, mode))
    g = rng.standard_normal(got.shape)
    dx = pad2d_backward(g, x.shape, pads, mode)
    close(dx, naive_pad_adjoint(g, (4, 5), pads, mode))
    # adjointness, <pad(x), g> == <x, pad_backward(g)>, independent of both twins
    assert abs((got * g).sum() - (x * dx).sum()) <= 1e-12 * abs((got * g).sum()) + 1e-12
    # channels-last, as conv2d calls it
    xl = x.transpose(0, 2, 3, 1)
    close(pad2d(xl, pads, mode, axes=(1, 2)), naive_pad(x, pads, mode).transpose(0, 2, 3, 1))
    close(pad2d_backward(g.transpose(0, 2, 3, 1), xl.shape, pads, mode, axes=(1, 2)),
          naive_pad_adjoint(g, (4, 5), pads, mode).transpose(0, 2, 3, 1))


def test_pad2d_constant_value():
    x = np.random.default_rng(4).standard_normal((2, 2, 3, 3))
    close(pad2d(x, (1, 0, 2, 1), "zeros", value=-np.pi), naive_pad(x, (1, 0, 2, 1), "zeros", value=-np.pi))
    got = pad2d(x, (1, 1, 1, 1), "zeros", value=-np.inf)
    assert np.all(got[..., 0, :] == -np.inf) and np.array_equal(got[..., 1:-1, 1:-1], x)


# ----- pooling -----
def _pool_geometry(h, k, s, p, d, ceil_mode):
    num = h + 2 * p - d * (k - 1) - 1
    out = -(-num // s) + 1 if ceil_mode else num // s + 1
    if ceil_mode and (out - 1) * s >= h + p:
        out -= 1
    return out


def naive_max_pool(x, kernel, stride, padding, dilation, ceil_mode, dout):
    """Forward, indices and backward: the first maximum (row-major in its window) wins."""
    n_, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    ho, wo = _pool_geometry(h, kh, sh, ph, dh, ceil_mode), _pool_geometry(w, kw, sw, pw, dw, ceil_mode)
    out, idx, dx = np.zeros((n_, c, ho, wo)), np.zeros((n_, c, ho, wo), np.int64), np.zeros_like(x)
    for n in range(n_):
        for cc in range(c):
            for i in range(ho):
                for j in range(wo):
                    best, where = -np.inf, None
                    for u in range(kh):
                        for v in range(kw):
                            r, s = i * sh - ph + u * dh, j * sw - pw + v * dw
                            if 0 <= r < h and 0 <= s < w and x[n, cc, r, s] > best:
                                best, where = x[n, cc, r, s], (r, s)
                    out[n, cc, i, j], idx[n, cc, i, j] = best, where[0] * w + where[1]
                    dx[n, cc, where[0], where[1]] += dout[n, cc, i, j] if dout is not None else 0.0
    return out, idx, dx


def naive_avg_pool(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, dout):
    n_, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho, wo = _pool_geometry(h, kh, sh, ph, 1, ceil_mode), _pool_geometry(w, kw, sw, pw, 1, ceil_mode)
    out, dx = np.zeros((n_, c, ho, wo)), np.zeros_like(x)
    for i in range(ho):
        for j in range(wo):
            taps = [(i * sh - ph + u, j * sw - pw + v) for u in range(kh) for v in range(kw)]
            real = [(r, s) for r, s in taps if 0 <= r < h and 0 <= s < w]
            # with count_include_pad the padding counts, but not a ceil-mode overhang past it
            in_pad = [(r, s) for r, s in taps if -ph <= r < h + ph and -pw <= s < w + pw]
            div = divisor_override or (len(in_pad) if count_include_pad else len(real))
            for r, s in real:
                out[:, :, i, j] += x[:, :, r, s] / div
                dx[:, :, r, s] += dout[:, :, i, j] / div
    return out, dx


MAX_POOL_CONFIGS = [((2, 2, 6, 7), (2, 2), (2, 2), (0, 0), (1, 1), False),
                    ((1, 3, 7, 7), (3, 3), (2, 2), (1, 1), (1, 1), True),
                    ((2, 1, 8, 9), (3, 2), (1, 2), (1, 1), (2, 2), False),
                    ((1, 2, 7, 8), (2, 3), (3, 2), (1, 0), (2, 1), True),
                    ((2, 2, 5, 5), (3, 3), (1, 1), (0, 1), (1, 1), True)]


def in_layout(x, layout):
    """x as given (NCHW) or as an NCHW view of channels-last memory, as a convolution leaves it."""
    return x if layout == "nchw" else np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("xs,kernel,stride,padding,dilation,ceil_mode", MAX_POOL_CONFIGS)
def test_max_pool2d_against_loops(xs, kernel, stride, padding, dilation, ceil_mode, layout):
    rng = np.random.default_rng(5)
    x = rng.permutation(np.prod(xs)).reshape(xs) + rng.uniform(0, 0.5, xs)  # no ties
    xt = cnnlab.Tensor(in_layout(x, layout), requires_grad=True)
    out, idx = F.max_pool2d(xt, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    dout = rng.standard_normal(out.shape)
    want, want_idx, want_dx = naive_max_pool(x, kernel, stride, padding, dilation, ceil_mode, dout)
    close(out.data, want)
    np.testing.assert_array_equal(idx.data, want_idx)
    with cnnlab.no_grad():  # inference takes the maxima alone, rows then columns
        close(F.max_pool2d(xt, kernel, stride, padding, dilation, ceil_mode).data, want)
    out.backward(dout)
    close(xt.grad, want_dx)


AVG_POOL_CONFIGS = [((2, 2, 6, 7), (2, 2), (2, 2), (0, 0), False, True, None),
                    ((1, 3, 7, 7), (3, 3), (2, 2), (1, 1), True, True, None),
                    ((1, 3, 7, 8), (3, 3), (2, 2), (1, 1), True, False, None),
                    ((2, 1, 8, 6), (3, 2), (1, 2), (1, 1), False, False, None),
                    ((1, 2, 5, 7), (2, 3), (3, 2), (1, 1), True, True, 4)]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("xs,kernel,stride,padding,ceil_mode,count_include_pad,divisor", AVG_POOL_CONFIGS)
def test_avg_pool2d_against_loops(xs, kernel, stride, padding, ceil_mode, count_include_pad, divisor, layout):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(xs)
    xt = cnnlab.Tensor(in_layout(x, layout), requires_grad=True)
    out = F.avg_pool2d(xt, kernel, stride, padding, ceil_mode, count_include_pad, divisor)
    dout = rng.standard_normal(out.shape)
    want, want_dx = naive_avg_pool(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor, dout)
    close(out.data, want)
    out.backward(dout)
    close(xt.grad, want_dx)


@pytest.mark.parametrize("pool", [F.max_pool2d, F.avg_pool2d])
def test_pool_gradient_keeps_the_input_layout(pool):
    """An NCHW-contiguous upstream gradient (as a Flatten hands back) is brought to the
    channels-last input's layout, so the ReLU backward before the pool runs over arrays
    of one layout."""
    seen = []

    class Spy(cnnlab.autograd.Function):  # identity that records the gradient it is handed
        @staticmethod
        def forward(ctx, a):
            return a

        @staticmethod
        def backward(ctx, g):
            seen.append(g)
            return (g,)

    x = np.random.default_rng(7).standard_normal((2, 3, 4, 4))
    xt = cnnlab.Tensor(in_layout(x, "channels_last"), requires_grad=True)
    out = pool(Spy.apply(xt), 2)
    out.backward(np.ones(out.shape))      # C-contiguous
    assert seen[0].strides[1] == seen[0].itemsize      # channels-last
    close(seen[0], xt.grad)


# ----- locally connected -----
def naive_locally_connected(x, w, b, stride, pads, dilation, mode, dout):
    n_, c, h, wd = x.shape
    ho, wo, f_, _, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    xp = naive_pad(x, pads, mode)
    out, dxp, dw_ = np.zeros((n_, f_, ho, wo)), np.zeros_like(xp), np.zeros_like(w)
    for n in range(n_):
        for f in range(f_):
            for i in range(ho):
                for j in range(wo):
                    for cc in range(c):
                        for u in range(kh):
                            for v in range(kw):
                                r, s = i * sh + u * dh, j * sw + v * dw
                                out[n, f, i, j] += w[i, j, f, cc, u, v] * xp[n, cc, r, s]
                                dxp[n, cc, r, s] += w[i, j, f, cc, u, v] * dout[n, f, i, j]
                                dw_[i, j, f, cc, u, v] += xp[n, cc, r, s] * dout[n, f, i, j]
                    out[n, f, i, j] += b[f, i, j]
    return out, naive_pad_adjoint(dxp, (h, wd), pads, mode), dw_, dout.sum(axis=0)


LC_CONFIGS = [((2, 2, 5, 5), 3, (3, 3), 1, 0, 1, "zeros"),
              ((1, 3, 6, 7), 2, (2, 3), (2, 1), (1, 2), (1, 2), "reflect"),
              ((2, 2, 5, 6), 2, (3, 3), 2, "same", 1, "symmetric"),
              ((1, 2, 4, 5), 3, (2, 2), 1, 1, 2, "circular")]


@pytest.mark.parametrize("xs,f,kernel,stride,padding,dilation,mode", LC_CONFIGS)
def test_locally_connected2d_against_loops(xs, f, kernel, stride, padding, dilation, mode):
    rng = np.random.default_rng(7)
    stride, dilation = _pair(stride), _pair(dilation)
    pads = _pads(padding, xs[2:], kernel, stride, dilation)
    ho, wo = F.conv_output_size(xs[2:], kernel, stride, padding, dilation)
    x, w = rng.standard_normal(xs), rng.standard_normal((ho, wo, f, xs[1]) + kernel)
    b = rng.standard_normal((f, ho, wo))
    dout = rng.standard_normal((xs[0], f, ho, wo))
    want, dx, dw, db = naive_locally_connected(x, w, b, stride, pads, dilation, mode, dout)
    xt, wt, bt = (cnnlab.Tensor(a, requires_grad=True) for a in (x, w, b))
    out = F.locally_connected2d(xt, wt, bt, stride, padding, dilation, padding_mode=mode)
    close(out.data, want)
    out.backward(dout)
    close(xt.grad, dx)
    close(wt.grad, dw)
    close(bt.grad, db)
