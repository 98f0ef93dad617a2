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
batch-norm passes. The fifth is Winograd's F(2x2, 3x3) convolution (see
:mod:`cnnlab.functional.conv`): its input and output transforms are sums and
differences of 4x4 tiles, dozens of strided NumPy passes, and one pass each here.

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
    def winograd_input(x, top, left, th, tw, r, v):
        """Winograd F(2x2, 3x3)'s input transform: B^T d B for every 4x4 tile d, two apart,
        th by tw of them, of the zero-padded image with ``x`` (N, H, W, C), channels-last
        and contiguous, at row ``top`` and column ``left`` of it (either may be negative:
        the tiles then start inside x), into v (16, N*th*tw, C), contiguous: row 4*a + b
        holds every tile's (a, b) entry, one matrix per entry for its product. B^T's
        rows are d0 - d2, d1 + d2, d2 - d1, d1 - d3. Rows first, along whole padded rows
        (r: (4, >= (2*tw + 2)*C) scratch), the zero padding read from a row of zeros and
        never copied, then columns. Every inner loop stores to one array, so the
        compiler's aliasing checks stay few and the loops vectorise (one loop storing
        all four entries was not vectorised: 16 channels, 42 -> 18 us an image), and
        indexes slices from 0, so no negative-index wrap-around is compiled in (flat
        indices with offsets: 18 -> 45 us)."""
        nb, h, w, c = x.shape
        width = (2 * tw + 2) * c
        zero = np.zeros(w * c, x.dtype)
        p0, p1 = min(max(left, 0), 2 * tw + 2), min(max(left + w, 0), 2 * tw + 2)   # pixels from x
        n_in = (p1 - p0) * c
        s0 = (p0 - left) * c                                                        # where in x's row
        r0, r1, r2, r3 = r[0], r[1], r[2], r[3]
        for q in range(p0 * c):
            r0[q] = 0
            r1[q] = 0
            r2[q] = 0
            r3[q] = 0
        for q in range(p1 * c, width):
            r0[q] = 0
            r1[q] = 0
            r2[q] = 0
            r3[q] = 0
        d0, d1, d2, d3 = r0[p0 * c:p1 * c], r1[p0 * c:p1 * c], r2[p0 * c:p1 * c], r3[p0 * c:p1 * c]
        for b in range(nb):
            for i in range(th):
                y = 2 * i - top
                x0 = (x[b, y].reshape(-1) if 0 <= y < h else zero)[s0:s0 + n_in]
                x1 = (x[b, y + 1].reshape(-1) if 0 <= y + 1 < h else zero)[s0:s0 + n_in]
                x2 = (x[b, y + 2].reshape(-1) if 0 <= y + 2 < h else zero)[s0:s0 + n_in]
                x3 = (x[b, y + 3].reshape(-1) if 0 <= y + 3 < h else zero)[s0:s0 + n_in]
                for q in range(n_in):
                    d0[q] = x0[q] - x2[q]
                for q in range(n_in):
                    d1[q] = x1[q] + x2[q]
                for q in range(n_in):
                    d2[q] = x2[q] - x1[q]
                for q in range(n_in):
                    d3[q] = x1[q] - x3[q]
                t0 = (b * th + i) * tw
                for a in range(4):
                    ra = r[a]
                    for j in range(tw):
                        d = ra[2 * j * c:(2 * j + 4) * c]       # the tile's four columns
                        dst = v[4 * a, t0 + j]
                        for ch in range(c):
                            dst[ch] = d[ch] - d[2 * c + ch]
                        dst = v[4 * a + 1, t0 + j]
                        for ch in range(c):
                            dst[ch] = d[c + ch] + d[2 * c + ch]
                        dst = v[4 * a + 2, t0 + j]
                        for ch in range(c):
                            dst[ch] = d[2 * c + ch] - d[c + ch]
                        dst = v[4 * a + 3, t0 + j]
                        for ch in range(c):
                            dst[ch] = d[c + ch] - d[3 * c + ch]

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
        """Winograd F(2x2, 3x3)'s output transform, A^T m A with A^T = [[1, 1, 1, 0],
        [0, 1, -1, -1]], from m (16, N*th*tw, F), the products of :func:`winograd_input`'s
        entries, into out (N, Ho, Wo, F) channels-last, Ho <= 2*th, Wo <= 2*tw (an odd
        size drops the last tiles' second row or column). Along whole tile rows first
        (z: (8, >= tw*F) scratch), then columns; one store a loop, as there. ``m`` and
        ``out`` are contiguous. Returns whether every output is finite, each row checked
        while in cache (a separate pass over a block's output, read back from memory, took
        6.6 us an image against 1.7 in cache: 16 channels, 2 threads)."""
        nb, ho, wo, f = out.shape
        span = tw * f
        finite = True
        mf = m.reshape(16, -1)
        of = out.reshape(nb, ho, -1)
        for b in range(nb):
            for i in range(th):
                base = (b * th + i) * span
                for e in range(4):                # column e of the tiles: rows combined
                    m0, m1, m2, m3 = mf[e], mf[4 + e], mf[8 + e], mf[12 + e]
                    top, bottom = z[e], z[4 + e]
                    for q in range(span):
                        top[q] = m0[base + q] + m1[base + q] + m2[base + q]
                    for q in range(span):
                        bottom[q] = m1[base + q] - m2[base + q] - m3[base + q]
                for half in range(2):
                    row = 2 * i + half
                    if row >= ho:
                        break
                    z0, z1, z2, z3 = z[4 * half], z[4 * half + 1], z[4 * half + 2], z[4 * half + 3]
                    o = of[b, row]
                    for j in range(tw):
                        s = j * f
                        for ch in range(f):
                            o[2 * s + ch] = z0[s + ch] + z1[s + ch] + z2[s + ch]
                        if 2 * j + 1 < wo:
                            for ch in range(f):
                                o[2 * s + f + ch] = z1[s + ch] - z2[s + ch] - z3[s + ch]
                    finite = finite and all_finite(o)     # while the row is in cache
        return finite

    @jit
    def winograd_gradient(g, th, tw, r, y):
        """The output gradient's tiles for Winograd F(2x2, 3x3)'s weight gradient: A gy A^T
        (the adjoint of :func:`winograd_output`'s transform; A's rows [1, 0], [1, 1],
        [1, -1], [0, -1]) for every 2x2 tile gy of ``g`` (N, Ho, Wo, F), channels-last
        and contiguous (an odd size's last tiles read zeros for the row or column it
        lacks), into y (16, N*th*tw, F), contiguous. Rows first (r: (4, >= 2*tw*F)
        scratch), then columns, one store a loop, as in :func:`winograd_input`."""
        nb, ho, wo, f = g.shape
        width = 2 * tw * f
        n_in = wo * f
        zero = np.zeros(width, g.dtype)
        r0, r1, r2, r3 = r[0], r[1], r[2], r[3]
        for q in range(n_in, width):
            r0[q] = 0
            r1[q] = 0
            r2[q] = 0
            r3[q] = 0
        for b in range(nb):
            for i in range(th):
                g0 = g[b, 2 * i].reshape(-1)
                g1 = g[b, 2 * i + 1].reshape(-1) if 2 * i + 1 < ho else zero
                for q in range(n_in):
                    r0[q] = g0[q]
                for q in range(n_in):
                    r1[q] = g0[q] + g1[q]
                for q in range(n_in):
                    r2[q] = g0[q] - g1[q]
                for q in range(n_in):
                    r3[q] = -g1[q]
                t0 = (b * th + i) * tw
                for a in range(4):
                    ra = r[a]
                    for j in range(tw):
                        d = ra[2 * j * f:(2 * j + 2) * f]       # the tile's two columns
                        dst = y[4 * a, t0 + j]
                        for ch in range(f):
                            dst[ch] = d[ch]
                        dst = y[4 * a + 1, t0 + j]
                        for ch in range(f):
                            dst[ch] = d[ch] + d[f + ch]
                        dst = y[4 * a + 2, t0 + j]
                        for ch in range(f):
                            dst[ch] = d[ch] - d[f + ch]
                        dst = y[4 * a + 3, t0 + j]
                        for ch in range(f):
                            dst[ch] = -d[f + ch]

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
