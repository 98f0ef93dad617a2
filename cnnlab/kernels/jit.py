"""Optional Numba kernels for passes NumPy can only write as several sweeps over memory.

Batch norm is one case: in NumPy its training forward pass is six array operations
(sum, subtract, square-sum, scale, multiply, add) and its backward five, each reading
and writing the whole activation. The loops below do the same arithmetic in three
passes forward (mean, variance, normalise) and two backward (sums, then the input
gradient), one row (a position's C channels, channels-last) at a time. Max pooling
with its arg-max is another: five NumPy operations per window tap forward and two
backward become one pass each way. col2im is the third: a strided add per kernel tap,
each only C values long at a time, becomes one scatter-add pass. Average pooling is the
fourth: one pass each way over the unpadded input, each window clipped to it, where
NumPy pads a copy and sums rows, then columns. A fused ReLU's mask rides along in the
batch-norm passes. The fifth is Winograd's F(4x4, 3x3) convolution (see
:mod:`cnnlab.functional.conv`): its input and output transforms are sums, differences
and small multiples of 6x6 tiles, dozens of strided NumPy passes, and one pass each here.

Numba is the ``fast`` extra. Without it, or with ``CNNLAB_JIT=0`` in the environment,
:func:`kernels` returns None and callers keep their NumPy code, which stays the
reference: the tests run both. Numba is imported, and each kernel compiled, on first
use only (the compiled code is cached on disk), so inference and ``cnnlab predict``
never pay for it.

The batch-norm kernels take 2-D (rows, C) arrays, C-contiguous: a channels-last block
of a batch seen as one row per position. Sums accumulate in float64 per channel, which
keeps float32 statistics at least as accurate as NumPy's. The pooling kernels index
(N, H, W, C) views of channels-last memory, so their innermost loop runs along memory;
their ``_planes`` twins index channels-first (N, C, H, W) memory, rows innermost.
"""
from __future__ import annotations

import os
import threading
import warnings

_lock = threading.Lock()
_kernels = None          # the compiled namespace, False once found unavailable


def available() -> bool:
    """Whether Numba is installed and not switched off by ``CNNLAB_JIT=0``."""
    if os.environ.get("CNNLAB_JIT", "1").strip() == "0":
        return False
    try:
        import importlib.util
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


def kernels():
    """The namespace of compiled kernels, or None without Numba (or with CNNLAB_JIT=0, read
    at the first call). A thread that asks while another builds them waits for the result."""
    global _kernels
    if _kernels is None:
        with _lock:
            if _kernels is None:
                built = False
                if available():
                    try:
                        built = _build()
                    except Exception as e:  # noqa: BLE001 - e.g. a Numba too old for this NumPy
                        warnings.warn(f"cnnlab: Numba kernels unavailable ({type(e).__name__}: {e}); batch norm, "
                                      "pooling and col2im run on NumPy", RuntimeWarning, stacklevel=2)
                _kernels = built
    return _kernels or None


def _build():
    import types

    import numba
    import numpy as np

    def jit(fn, **options):
        # compiled code is cached beside this file (or in the user's cache folder); where
        # neither is writable, Numba refuses cache=True, and the kernels compile per process
        try:
            return numba.njit(nogil=True, cache=True, error_model="numpy", **options)(fn)
        except RuntimeError:
            return numba.njit(nogil=True, cache=False, error_model="numpy", **options)(fn)

    def reordering_sums(fn):
        # only reassociation: no flag that lets the compiler assume away infinities or NaN
        return jit(fn, fastmath={"reassoc"})

    @jit
    def channel_sums(x):
        """Per-channel sum of the rows of x, in float64."""
        c = x.shape[1]
        s = np.zeros(c, np.float64)
        for i in range(x.shape[0]):
            for j in range(c):
                s[j] += x[i, j]
        return s

    @jit
    def centered_square_sums(x, mean):
        """Per-channel sum of (x - mean)^2, in float64 (the two-pass variance)."""
        c = x.shape[1]
        s = np.zeros(c, np.float64)
        for i in range(x.shape[0]):
            for j in range(c):
                d = x[i, j] - mean[j]
                s[j] += d * d
        return s

    @jit
    def normalize(x, mean, inv_std, gamma, beta, res, x_hat, out, relu):
        """x_hat = (x - mean) * inv_std; out = x_hat * gamma + beta, plus the residual
        ``res`` unless it is None (rounded step by step, as batch norm's output and then
        the sum would be), then max(out, 0) if ``relu`` (one pass). Numba compiles the
        None case apart, without the branch."""
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                h = (x[i, j] - mean[j]) * inv_std[j]
                x_hat[i, j] = h
                o = h * gamma[j] + beta[j]
                if res is not None:
                    o = o + res[i, j]
                out[i, j] = o
            if relu:
                for j in range(x.shape[1]):
                    if out[i, j] <= 0:     # -0.0 too, as np.maximum(-0.0, 0) gives +0.0; NaN stays NaN
                        out[i, j] = 0

    @jit
    def grad_sums(g, x_hat, gamma, beta):
        """Per-channel sums of g and of g * x_hat, in float64. Through a ReLU fused into
        batch norm (``gamma`` and ``beta`` given, else None), g counts as the separate
        ReLU's gradient g * (y > 0) would: its output y = max(x_hat * gamma + beta, 0) is
        recomputed exactly as ``normalize`` computed it, rather than read from memory."""
        c = g.shape[1]
        zero = np.zeros(1, g.dtype)[0]       # typed like g, so the arithmetic stays in g's precision
        sg = np.zeros(c, np.float64)
        sgx = np.zeros(c, np.float64)
        for i in range(g.shape[0]):
            for j in range(c):
                gr = g[i, j]
                if gamma is not None:
                    if not x_hat[i, j] * gamma[j] + beta[j] > 0:
                        gr = gr * zero
                sg[j] += gr
                sgx[j] += gr * x_hat[i, j]
        return sg, sgx

    @jit
    def input_grad(g, x_hat, gamma, beta, scale, a, b, out):
        """dx = g * scale - x_hat * a - b (one pass); g through a fused ReLU as in
        ``grad_sums`` when ``gamma`` and ``beta`` are given."""
        zero = np.zeros(1, g.dtype)[0]
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                gr = g[i, j]
                if gamma is not None:
                    if not x_hat[i, j] * gamma[j] + beta[j] > 0:
                        gr = gr * zero
                out[i, j] = gr * scale[j] - x_hat[i, j] * a[j] - b[j]

    @jit
    def max_pool_forward(xp, kh, kw, sh, sw, dh, dw, out, arg):
        """Max pooling with the arg-max tap, on (N, H, W, C)-indexed arrays (the padded
        input xp, out, arg): PyTorch's rule, a later tap wins if greater or NaN. Taps
        outside, channels inside, so the comparisons run along memory (SIMD)."""
        n, ho, wo, c = out.shape
        for b in range(n):
            for i in range(ho):
                for j in range(wo):
                    for ch in range(c):
                        out[b, i, j, ch] = xp[b, i * sh, j * sw, ch]
                        arg[b, i, j, ch] = 0
                    for t in range(1, kh * kw):
                        u = t // kw
                        r, q = i * sh + u * dh, j * sw + (t - u * kw) * dw
                        for ch in range(c):
                            val = xp[b, r, q, ch]
                            if val > out[b, i, j, ch] or val != val:
                                out[b, i, j, ch] = val
                                arg[b, i, j, ch] = t

    @jit
    def max_pool_backward(g, arg, kh, kw, sh, sw, dh, dw, tiles, dxp):
        """Each output's gradient to its arg-max tap in dxp. ``tiles``: the windows cover
        dxp exactly once (stride = kernel, no dilation), so every element is assigned;
        otherwise dxp is zeroed and the taps add up (windows may overlap or leave gaps)."""
        if not tiles:
            dxp[...] = 0
        n, ho, wo, c = g.shape
        for b in range(n):
            for i in range(ho):
                for j in range(wo):
                    for t in range(kh * kw):
                        u = t // kw
                        r, q = i * sh + u * dh, j * sw + (t - u * kw) * dw
                        for ch in range(c):
                            v = g[b, i, j, ch] if arg[b, i, j, ch] == t else 0
                            if tiles:
                                dxp[b, r, q, ch] = v
                            else:
                                dxp[b, r, q, ch] += v

    @jit
    def max_pool_forward_planes(xp, kh, kw, sh, sw, dh, dw, out, arg):
        """:func:`max_pool_forward` for channels-first memory: (N, C, H, W)-indexed arrays
        whose rows (W) are contiguous. One output at a time, its taps in order, the
        running maximum in a register (a ResNet-50 stem's 3x3/2: half the time of a pass
        per tap along the row, whose strided loads and stores do not vectorise)."""
        n, c, ho, wo = out.shape
        for b in range(n):
            for ch in range(c):
                for i in range(ho):
                    o, a = out[b, ch, i], arg[b, ch, i]
                    for j in range(wo):
                        best = xp[b, ch, i * sh, j * sw]
                        at = 0
                        for u in range(kh):          # nested, not t // kw: a division per tap costs more
                            row = xp[b, ch, i * sh + u * dh]
                            for v in range(1 if u == 0 else 0, kw):
                                val = row[j * sw + v * dw]
                                if val > best or val != val:
                                    best = val
                                    at = u * kw + v
                        o[j] = best
                        a[j] = at

    @jit
    def max_pool_backward_planes(g, arg, kh, kw, sh, sw, dh, dw, dxp):
        """:func:`max_pool_backward` for channels-first memory: dxp = 0, then each
        output's gradient added at its arg-max tap, one scatter per output."""
        dxp[...] = 0
        n, c, ho, wo = g.shape
        for b in range(n):
            for ch in range(c):
                for i in range(ho):
                    for j in range(wo):
                        t = arg[b, ch, i, j]
                        u = t // kw
                        dxp[b, ch, i * sh + u * dh, j * sw + (t - u * kw) * dw] += g[b, ch, i, j]

    @jit
    def clipped(i, s, pad, k, n):
        """Output i's window along one axis (stride s, padding pad, k taps, n inputs):
        its first input position, and the range of its taps that fall inside the input."""
        start = i * s - pad
        return start, max(0, -start), min(k, n - start)

    @jit
    def avg_pool_forward(x, kh, kw, sh, sw, top, left, div, out):
        """Average pooling on (N, H, W, C)-indexed arrays (channels-last memory) of the
        unpadded input: each output's taps inside the input summed in order, row by row
        (the zero padding adds nothing, so it is never built: a window's rows and
        columns are clipped to the input before the loops), then divided by its divisor
        ``div`` (Ho, Wo). One pass, channels innermost."""
        n, ho, wo, c = out.shape
        h, w = x.shape[1], x.shape[2]
        for b in range(n):
            for i in range(ho):
                r0, u0, u1 = clipped(i, sh, top, kh, h)
                for j in range(wo):
                    q0, v0, v1 = clipped(j, sw, left, kw, w)
                    o = out[b, i, j]
                    for ch in range(c):
                        o[ch] = 0
                    for u in range(u0, u1):
                        for v in range(v0, v1):
                            src = x[b, r0 + u, q0 + v]
                            for ch in range(c):
                                o[ch] += src[ch]
                    d = div[i, j]
                    for ch in range(c):
                        o[ch] /= d

    @jit
    def avg_pool_backward(g, kh, kw, sh, sw, top, left, div, dx):
        """dx = 0, then each output's gradient divided by its divisor and added to every
        tap of its window inside the input; channels-last, channels innermost."""
        dx[...] = 0
        n, ho, wo, c = g.shape
        h, w = dx.shape[1], dx.shape[2]
        for b in range(n):
            for i in range(ho):
                r0, u0, u1 = clipped(i, sh, top, kh, h)
                for j in range(wo):
                    q0, v0, v1 = clipped(j, sw, left, kw, w)
                    src = g[b, i, j]
                    d = div[i, j]
                    for u in range(u0, u1):
                        for v in range(v0, v1):
                            dst = dx[b, r0 + u, q0 + v]
                            for ch in range(c):
                                dst[ch] += src[ch] / d

    @jit
    def avg_pool_forward_planes(x, kh, kw, sh, sw, top, left, div, out):
        """:func:`avg_pool_forward` for channels-first memory, rows innermost: one output
        at a time, its sum in a register."""
        n, c, ho, wo = out.shape
        h, w = x.shape[2], x.shape[3]
        for b in range(n):
            for ch in range(c):
                for i in range(ho):
                    r0, u0, u1 = clipped(i, sh, top, kh, h)
                    o = out[b, ch, i]
                    for j in range(wo):
                        q0, v0, v1 = clipped(j, sw, left, kw, w)
                        d = div[i, j]
                        s = d - d           # a zero of the input's float type
                        for u in range(u0, u1):
                            row = x[b, ch, r0 + u]
                            for v in range(v0, v1):
                                s += row[q0 + v]
                        o[j] = s / d

    @jit
    def avg_pool_backward_planes(g, kh, kw, sh, sw, top, left, div, dx):
        """:func:`avg_pool_backward` for channels-first memory: per output row, its
        shares (gradient / divisor) worked out once, then added tap by tap along the
        input's rows, each tap's run of outputs clipped to the input beforehand."""
        dx[...] = 0
        n, c, ho, wo = g.shape
        h, w = dx.shape[2], dx.shape[3]
        share = np.empty(wo, dx.dtype)
        for b in range(n):
            for ch in range(c):
                for i in range(ho):
                    gi, di = g[b, ch, i], div[i]
                    for j in range(wo):
                        share[j] = gi[j] / di[j]
                    r0 = i * sh - top
                    for u in range(max(0, -r0), min(kh, h - r0)):
                        row = dx[b, ch, r0 + u]
                        for v in range(kw):
                            q = v - left                       # column of output j: j * sw + q
                            j0 = max(0, (-q + sw - 1) // sw)
                            j1 = min(wo, (w - 1 - q) // sw + 1)
                            for j in range(j0, j1):
                                row[j * sw + q] += share[j]

    @jit
    def col2im(d, sh, sw, dh, dw, dxp):
        """dxp = 0, then each window's gradient added back where the window read from:
        d (N, Ho, Wo, KH, KW, C), one row per output position, as the product G @ W^T
        gives it; dxp (N, Hp, Wp, C), the padded input's gradient. One pass, channels
        innermost, instead of a strided NumPy add per tap (six values long for LeNet-5)."""
        dxp[...] = 0
        n, ho, wo, kh, kw, c = d.shape
        for b in range(n):
            for i in range(ho):
                for j in range(wo):
                    for u in range(kh):
                        r = i * sh + u * dh
                        for v in range(kw):
                            q = j * sw + v * dw
                            for ch in range(c):
                                dxp[b, r, q, ch] += d[b, i, j, u, v, ch]

    @jit
    def col2im_planes(d, sh, sw, dh, dw, dxp):
        """:func:`col2im` for the planes layout of few-channel layers: d (N, C, KH, KW, Ho,
        Wo), one output-sized plane per tap, into dxp (N, C, Hp, Wp), each plane added
        along rows, which vectorises for stride 1 (C = 3: 27 -> 4.7 us an image)."""
        dxp[...] = 0
        n, c, kh, kw, ho, wo = d.shape
        for b in range(n):
            for ch in range(c):
                for u in range(kh):
                    for v in range(kw):
                        for i in range(ho):
                            row = dxp[b, ch, i * sh + u * dh]
                            src = d[b, ch, u, v, i]
                            if sw == 1:      # a unit stride the compiler can see
                                dst = row[v * dw:v * dw + wo]
                                for j in range(wo):
                                    dst[j] += src[j]
                            else:
                                for j in range(wo):
                                    row[v * dw + j * sw] += src[j]

    @jit
    def scalar(value, like):
        """``value`` as a scalar of ``like``'s dtype: the transforms' constant factors,
        so that float32 rows stay float32 (a Python integer times a float32 element is
        float64 to Numba, and the row then runs at half the vector width with conversions:
        16 channels, the input transform 21 -> 15 us an image)."""
        return np.full(1, value, like.dtype)[0]

    @jit
    def winograd_input(x, top, left, th, tw, r, v):
        """Winograd F(4x4, 3x3)'s input transform: B^T d B for every 6x6 tile d, four apart,
        th by tw of them, of the zero-padded image with ``x`` (N, H, W, C), channels-last
        and contiguous, at row ``top`` and column ``left`` of it (either may be negative:
        the tiles then start inside x), into v (36, N*th*tw, C), contiguous: row 6*a + b
        holds every tile's (a, b) entry, one matrix per entry for its product. B^T's rows,
        applied to d0..d5: 4 d0 - 5 d2 + d4, d3 + d4 - 4 (d1 + d2), 4 (d1 - d2) + d4 - d3,
        2 (d3 - d1) + d4 - d2, 2 (d1 - d3) + d4 - d2, 4 d1 - 5 d3 + d5. Rows first, along
        whole padded rows (r: (6, >= (4*tw + 2)*C) scratch), the zero padding read from a
        row of zeros and never copied, then columns. Every inner loop stores to one
        array, so the compiler's aliasing checks stay few and the loops vectorise (one
        loop storing all the entries was not vectorised: 42 against 18 us an image for
        F(2x2, 3x3)), and indexes slices from 0, so no negative-index wrap-around is
        compiled in (flat indices with offsets, F(2x2, 3x3): 18 -> 45 us). B^T's rows are
        written out in both passes (and A's in :func:`winograd_gradient`'s, alike in
        shape): one compiled 1-D transform called per row and per tile took 177 against
        15 us an image (16 channels; 64: 17 against 4), its calls and slices per tile
        costing more than the arithmetic."""
        nb, h, w, c = x.shape
        k2, k4, k5 = scalar(2, x), scalar(4, x), scalar(5, x)
        width = (4 * tw + 2) * c
        zero = np.zeros(w * c, x.dtype)
        p0, p1 = min(max(left, 0), 4 * tw + 2), min(max(left + w, 0), 4 * tw + 2)   # pixels from x
        n_in = (p1 - p0) * c
        s0 = (p0 - left) * c                                                        # where in x's row
        for a in range(6):
            ra = r[a]
            for q in range(p0 * c):
                ra[q] = 0
            for q in range(p1 * c, width):
                ra[q] = 0
        d0, d1, d2 = r[0, p0 * c:p1 * c], r[1, p0 * c:p1 * c], r[2, p0 * c:p1 * c]
        d3, d4, d5 = r[3, p0 * c:p1 * c], r[4, p0 * c:p1 * c], r[5, p0 * c:p1 * c]
        for b in range(nb):
            for i in range(th):
                y = 4 * i - top
                x0 = (x[b, y].reshape(-1) if 0 <= y < h else zero)[s0:s0 + n_in]
                x1 = (x[b, y + 1].reshape(-1) if 0 <= y + 1 < h else zero)[s0:s0 + n_in]
                x2 = (x[b, y + 2].reshape(-1) if 0 <= y + 2 < h else zero)[s0:s0 + n_in]
                x3 = (x[b, y + 3].reshape(-1) if 0 <= y + 3 < h else zero)[s0:s0 + n_in]
                x4 = (x[b, y + 4].reshape(-1) if 0 <= y + 4 < h else zero)[s0:s0 + n_in]
                x5 = (x[b, y + 5].reshape(-1) if 0 <= y + 5 < h else zero)[s0:s0 + n_in]
                for q in range(n_in):
                    d0[q] = k4 * x0[q] - k5 * x2[q] + x4[q]
                for q in range(n_in):
                    d1[q] = x3[q] + x4[q] - k4 * (x1[q] + x2[q])
                for q in range(n_in):
                    d2[q] = k4 * (x1[q] - x2[q]) + x4[q] - x3[q]
                for q in range(n_in):
                    d3[q] = k2 * (x3[q] - x1[q]) + x4[q] - x2[q]
                for q in range(n_in):
                    d4[q] = k2 * (x1[q] - x3[q]) + x4[q] - x2[q]
                for q in range(n_in):
                    d5[q] = k4 * x1[q] - k5 * x3[q] + x5[q]
                t0 = (b * th + i) * tw
                for a in range(6):
                    ra = r[a]
                    for j in range(tw):
                        d = ra[4 * j * c:(4 * j + 6) * c]       # the tile's six columns
                        dst = v[6 * a, t0 + j]
                        for ch in range(c):
                            dst[ch] = k4 * d[ch] - k5 * d[2 * c + ch] + d[4 * c + ch]
                        dst = v[6 * a + 1, t0 + j]
                        for ch in range(c):
                            dst[ch] = d[3 * c + ch] + d[4 * c + ch] - k4 * (d[c + ch] + d[2 * c + ch])
                        dst = v[6 * a + 2, t0 + j]
                        for ch in range(c):
                            dst[ch] = k4 * (d[c + ch] - d[2 * c + ch]) + d[4 * c + ch] - d[3 * c + ch]
                        dst = v[6 * a + 3, t0 + j]
                        for ch in range(c):
                            dst[ch] = k2 * (d[3 * c + ch] - d[c + ch]) + d[4 * c + ch] - d[2 * c + ch]
                        dst = v[6 * a + 4, t0 + j]
                        for ch in range(c):
                            dst[ch] = k2 * (d[c + ch] - d[3 * c + ch]) + d[4 * c + ch] - d[2 * c + ch]
                        dst = v[6 * a + 5, t0 + j]
                        for ch in range(c):
                            dst[ch] = k4 * d[c + ch] - k5 * d[3 * c + ch] + d[5 * c + ch]

    @reordering_sums
    def all_finite(a):
        """Whether a contiguous array holds no infinity or NaN: x - x is 0 for every
        finite x and NaN otherwise, and the sum of those may be reordered (so vectorised)
        without changing whether it is 0. One read, where NumPy's isfinite(...).all()
        writes and reads a mask, or a pairwise sum (16 channels: 3.3 -> 1.7 us an image)."""
        flat = a.reshape(-1)
        acc = 0.0
        for q in range(flat.size):
            acc += flat[q] - flat[q]
        return acc == 0

    @jit
    def winograd_output(m, th, tw, z, out):
        """Winograd F(4x4, 3x3)'s output transform, A^T m A with A^T's rows applied to
        m0..m5: m0 + m1 + m2 + m3 + m4, m1 - m2 + 2 (m3 - m4), m1 + m2 + 4 (m3 + m4),
        m1 - m2 + 8 (m3 - m4) + m5; from m (36, N*th*tw, F), the products of
        :func:`winograd_input`'s entries, into out (N, Ho, Wo, F) channels-last,
        Ho <= 4*th, Wo <= 4*tw (a size not a multiple of 4 drops the last tiles' extra
        rows or columns). Along whole tile rows first (z: (24, >= tw*F) scratch), then
        columns; one store a loop, as there. ``m`` and ``out`` are contiguous. Returns
        whether every output is finite, each row checked while in cache (a separate pass
        over a block's output, read back from memory, took 6.6 us an image against 1.7
        in cache: F(2x2, 3x3), 16 channels, 2 threads)."""
        nb, ho, wo, f = out.shape
        k2, k4, k8 = scalar(2, out), scalar(4, out), scalar(8, out)
        span = tw * f
        finite = True
        mf = m.reshape(36, -1)
        of = out.reshape(nb, ho, -1)
        for b in range(nb):
            for i in range(th):
                base = (b * th + i) * span
                for e in range(6):                # column e of the tiles: rows combined
                    m0, m1, m2 = mf[e, base:base + span], mf[6 + e, base:base + span], mf[12 + e, base:base + span]
                    m3, m4, m5 = mf[18 + e, base:base + span], mf[24 + e, base:base + span], mf[30 + e, base:base + span]
                    z0, z1, z2, z3 = z[e], z[6 + e], z[12 + e], z[18 + e]
                    for q in range(span):
                        z0[q] = m0[q] + m1[q] + m2[q] + m3[q] + m4[q]
                    for q in range(span):
                        z1[q] = m1[q] - m2[q] + k2 * (m3[q] - m4[q])
                    for q in range(span):
                        z2[q] = m1[q] + m2[q] + k4 * (m3[q] + m4[q])
                    for q in range(span):
                        z3[q] = m1[q] - m2[q] + k8 * (m3[q] - m4[q]) + m5[q]
                for k in range(4):
                    row = 4 * i + k
                    if row >= ho:
                        break
                    y0, y1, y2, y3, y4, y5 = z[6 * k], z[6 * k + 1], z[6 * k + 2], z[6 * k + 3], z[6 * k + 4], z[6 * k + 5]
                    o = of[b, row]
                    for j in range(tw):
                        s = j * f
                        for ch in range(f):
                            o[4 * s + ch] = y0[s + ch] + y1[s + ch] + y2[s + ch] + y3[s + ch] + y4[s + ch]
                        if 4 * j + 1 < wo:
                            for ch in range(f):
                                o[4 * s + f + ch] = y1[s + ch] - y2[s + ch] + k2 * (y3[s + ch] - y4[s + ch])
                        if 4 * j + 2 < wo:
                            for ch in range(f):
                                o[4 * s + 2 * f + ch] = y1[s + ch] + y2[s + ch] + k4 * (y3[s + ch] + y4[s + ch])
                        if 4 * j + 3 < wo:
                            for ch in range(f):
                                o[4 * s + 3 * f + ch] = y1[s + ch] - y2[s + ch] + k8 * (y3[s + ch] - y4[s + ch]) + y5[s + ch]
                    finite = finite and all_finite(o)     # while the row is in cache
        return finite

    @jit
    def winograd_gradient(g, th, tw, r, y):
        """The output gradient's tiles for Winograd F(4x4, 3x3)'s weight gradient: A gy A^T
        (the adjoint of :func:`winograd_output`'s transform; A's rows, applied to g0..g3:
        g0, g0 + g1 + g2 + g3, g0 - g1 + g2 - g3, g0 + 2 g1 + 4 g2 + 8 g3,
        g0 - 2 g1 + 4 g2 - 8 g3, g3) for every 4x4 tile gy of ``g`` (N, Ho, Wo, F),
        channels-last and contiguous (a size not a multiple of 4: the last tiles read
        zeros for the rows or columns they lack), into y (36, N*th*tw, F), contiguous.
        Rows first (r: (6, >= 4*tw*F) scratch), then columns, one store a loop, as in
        :func:`winograd_input`."""
        nb, ho, wo, f = g.shape
        k2, k4, k8 = scalar(2, g), scalar(4, g), scalar(8, g)
        width = 4 * tw * f
        n_in = wo * f
        zero = np.zeros(width, g.dtype)
        for a in range(6):
            ra = r[a]
            for q in range(n_in, width):
                ra[q] = 0
        r0, r1, r2, r3, r4, r5 = r[0, :n_in], r[1, :n_in], r[2, :n_in], r[3, :n_in], r[4, :n_in], r[5, :n_in]
        for b in range(nb):
            for i in range(th):
                g0 = g[b, 4 * i].reshape(-1)
                g1 = g[b, 4 * i + 1].reshape(-1) if 4 * i + 1 < ho else zero
                g2 = g[b, 4 * i + 2].reshape(-1) if 4 * i + 2 < ho else zero
                g3 = g[b, 4 * i + 3].reshape(-1) if 4 * i + 3 < ho else zero
                for q in range(n_in):
                    r0[q] = g0[q]
                for q in range(n_in):
                    r1[q] = g0[q] + g1[q] + g2[q] + g3[q]
                for q in range(n_in):
                    r2[q] = g0[q] - g1[q] + g2[q] - g3[q]
                for q in range(n_in):
                    r3[q] = g0[q] + k2 * g1[q] + k4 * g2[q] + k8 * g3[q]
                for q in range(n_in):
                    r4[q] = g0[q] - k2 * g1[q] + k4 * g2[q] - k8 * g3[q]
                for q in range(n_in):
                    r5[q] = g3[q]
                t0 = (b * th + i) * tw
                for a in range(6):
                    ra = r[a]
                    for j in range(tw):
                        d = ra[4 * j * f:(4 * j + 4) * f]       # the tile's four columns
                        dst = y[6 * a, t0 + j]
                        for ch in range(f):
                            dst[ch] = d[ch]
                        dst = y[6 * a + 1, t0 + j]
                        for ch in range(f):
                            dst[ch] = d[ch] + d[f + ch] + d[2 * f + ch] + d[3 * f + ch]
                        dst = y[6 * a + 2, t0 + j]
                        for ch in range(f):
                            dst[ch] = d[ch] - d[f + ch] + d[2 * f + ch] - d[3 * f + ch]
                        dst = y[6 * a + 3, t0 + j]
                        for ch in range(f):
                            dst[ch] = d[ch] + k2 * d[f + ch] + k4 * d[2 * f + ch] + k8 * d[3 * f + ch]
                        dst = y[6 * a + 4, t0 + j]
                        for ch in range(f):
                            dst[ch] = d[ch] - k2 * d[f + ch] + k4 * d[2 * f + ch] - k8 * d[3 * f + ch]
                        dst = y[6 * a + 5, t0 + j]
                        for ch in range(f):
                            dst[ch] = d[3 * f + ch]

    return types.SimpleNamespace(col2im=col2im, col2im_planes=col2im_planes, channel_sums=channel_sums,
                                 centered_square_sums=centered_square_sums,
                                 normalize=normalize, grad_sums=grad_sums, input_grad=input_grad,
                                 max_pool_forward=max_pool_forward, max_pool_backward=max_pool_backward,
                                 max_pool_forward_planes=max_pool_forward_planes,
                                 max_pool_backward_planes=max_pool_backward_planes,
                                 avg_pool_forward=avg_pool_forward, avg_pool_backward=avg_pool_backward,
                                 avg_pool_forward_planes=avg_pool_forward_planes,
                                 avg_pool_backward_planes=avg_pool_backward_planes,
                                 winograd_input=winograd_input, winograd_output=winograd_output,
                                 winograd_gradient=winograd_gradient,
                                 all_finite=all_finite)
