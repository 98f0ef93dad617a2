"""The blocked, multi-threaded kernels (cnnlab.kernels.parallel): every way of cutting
the batch into blocks and spreading them over threads gives PyTorch's values and
gradients (convolution, batch norm, ReLU), the same thread count gives bit-identical results, and without threadpoolctl
the kernel falls back to one block. Also the other speed machinery, each against PyTorch or
by what it must observably do: channels-last layouts kept through sums and gradients, the
optional Numba kernels (kernels.jit) beside their NumPy twins, and memory reuse."""
import os
import threading
import time
import weakref

import numpy as np
import pytest
import torch

import cnnlab
import cnnlab.functional as F
from cnnlab.kernels import parallel
from conftest import check_op
from test_parity_conv import GEOMETRY, torch_conv_ref


_workspace = parallel.workspace


def poisoned(slot, shape, dtype):
    a = _workspace(slot, shape, dtype)
    a.fill(np.nan)
    return a


@pytest.fixture
def blocking(monkeypatch):
    """Configure blocks of ``per_block`` images on ``threads`` threads; restores the
    thread count afterwards."""
    saved = parallel.get_num_threads()

    def configure(threads, per_block=1, controllable=True):
        parallel.set_num_threads(threads)
        # a block target of one byte gives one image per block; larger values merge images
        # (and no minimum of flops merges the tests' small images back into one block)
        monkeypatch.setattr(parallel, "TARGET_BLOCK_BYTES", per_block)
        monkeypatch.setattr(parallel, "MIN_BLOCK_FLOPS", 0)
        # and the tests' small outputs still run by kernel rows where the geometry allows
        monkeypatch.setattr(cnnlab.functional.conv, "ROW_PRODUCT_MIN_VALUES", 0)
        # (inference plans choose their path when built: none kept from before)
        monkeypatch.setattr(cnnlab.functional.conv._InferencePlan, "_local", threading.local())
        monkeypatch.setattr(parallel, "MIN_SPLIT_ELEMENTS", 1)    # split even tiny elementwise passes
        # scratch memory comes back full of NaN: a kernel that reads before writing shows
        monkeypatch.setattr(parallel, "workspace", poisoned)
        if not controllable:
            monkeypatch.setattr(parallel, "_blas_controllers", lambda: [])
            monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
            monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)

    yield configure
    parallel.set_num_threads(saved)


def _conv_case(gid, dtype, bias=True, padding_mode="zeros", batch=5):
    xs, ws, kw = GEOMETRY[gid]
    rng = np.random.default_rng(7)
    x = rng.standard_normal((batch,) + xs[1:])
    w = rng.standard_normal(ws)
    arrays = [x, w] + ([rng.standard_normal(ws[0])] if bias else [])
    kw = dict(kw, padding_mode=padding_mode)
    torch_fn = (lambda *a: torch_conv_ref(*a, **kw)) if bias else (lambda x, w: torch_conv_ref(x, w, None, **kw))
    check_op(f"conv2d (blocked, {gid})", lambda *a: F.conv2d(*a, **kw), torch_fn, arrays, dtype)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("gid", ["basic", "stride2", "stride_pair", "dilation_pair_stride", "groups3_stride_dil",
                                 "depthwise", "pointwise", "padding_larger_than_kernel", "nonsquare_kernel"])
def test_blocked_conv_matches_torch(blocking, threads, gid, dtype):
    blocking(threads)
    _conv_case(gid, dtype)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("gid", ["basic", "stride2", "dilation2"])
def test_blocked_conv_padding_modes(blocking, mode, gid):
    blocking(2)
    _conv_case(gid, np.float64, padding_mode=mode)


@pytest.mark.parametrize("per_block", [1, 10 ** 9])  # one image per block; all five in one block per thread
def test_block_sizes_agree(blocking, per_block):
    blocking(2, per_block)
    _conv_case("basic", np.float64, batch=5)


def test_untied_bias_and_no_bias(blocking):
    blocking(2)
    _conv_case("basic", np.float32, bias=False)
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((4, 3, 6, 6)), rng.standard_normal((2, 3, 3, 3)), rng.standard_normal((2, 4, 4))
    check_op("conv2d (blocked, untied bias)", lambda *a: F.conv2d(*a), lambda x, w, b: torch_conv_ref(x, w, None) + b,
             [x, w, b], np.float64)


def test_only_some_gradients(blocking):
    """Backward with only the weight, or only the input, requiring a gradient."""
    blocking(2)
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((4, 3, 6, 6)), rng.standard_normal((5, 3, 3, 3))
    for flags in ([True, False], [False, True]):
        check_op("conv2d (blocked, partial grads)", lambda *a: F.conv2d(*a, padding=1),
                 lambda x, w: torch_conv_ref(x, w, None, padding=1), [x, w], np.float64, requires_grad=flags)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(5, 3, 4, 4), (7, 4), (4, 2, 6)])
def test_split_batch_norm_matches_torch(blocking, threads, training, shape, dtype):
    blocking(threads)
    rng = np.random.default_rng(3)
    c = shape[1]
    x, w, b = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.random(c) + 0.5
    stats = {}

    def ours(x, w, b):
        m, v = rm.astype(dtype), rv.astype(dtype)
        out = F.batch_norm(x, m, v, w, b, training=training)
        stats["ours"] = (m, v)
        return out

    def theirs(x, w, b):
        m, v = torch.tensor(rm.astype(dtype)), torch.tensor(rv.astype(dtype))
        out = torch.nn.functional.batch_norm(x, m, v, w, b, training=training)
        stats["theirs"] = (m.numpy(), v.numpy())
        return out

    check_op("batch_norm (split)", ours, theirs, [x, w, b], dtype)
    for a, t in zip(stats["ours"], stats["theirs"]):
        np.testing.assert_allclose(a, t, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("threads", [2, 3])
def test_split_relu_matches_torch(blocking, threads, dtype):
    blocking(threads)
    x = np.random.default_rng(4).standard_normal((5, 3, 4, 4))
    check_op("relu (split)", F.relu, torch.relu, [x], dtype)


def test_split_covers_axis0(blocking):
    blocking(3)
    assert parallel.split(np.zeros((7, 2))) == [(0, 2), (2, 4), (4, 7)]
    assert parallel.split(np.zeros((2, 2))) == [(0, 1), (1, 2)]
    assert parallel.split(np.zeros(())) == [(0, 1)]


def _train_once(threads, blocking):
    blocking(threads)
    cnnlab.manual_seed(0)
    model = cnnlab.models.resnet20()
    opt = cnnlab.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    for _ in range(2):
        x = cnnlab.Tensor(rng.standard_normal((6, 3, 16, 16)).astype(np.float32))
        loss = F.cross_entropy(model(x), rng.integers(0, 10, 6))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.data.copy() for p in model.parameters()]


def test_same_thread_count_is_bit_identical(blocking):
    first, second = _train_once(2, blocking), _train_once(2, blocking)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    # another thread count sums the weight gradient in another order: equal up to rounding
    single = _train_once(1, blocking)
    assert max(np.abs(a - b).max() / (np.abs(b).max() + 1e-30) for a, b in zip(single, first)) < 1e-4


def test_without_threadpoolctl_one_block(blocking):
    blocking(2, controllable=False)
    assert not parallel.can_block()
    assert parallel.blocks(8, 100, 100) == [(0, 8)]
    _conv_case("basic", np.float32)
    # elementwise passes call no BLAS: they still split
    assert len(parallel.split(np.zeros((4, 3)))) == 2


@pytest.mark.parametrize("batch", [0, 1, 2])
def test_blocked_conv_small_batches(blocking, batch):
    blocking(2)
    _conv_case("basic", np.float64, batch=batch)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_blocked_conv_input_layouts(blocking, layout):
    blocking(2)
    rng = np.random.default_rng(8)
    if layout == "channels_last":
        x = np.ascontiguousarray(rng.standard_normal((4, 6, 6, 3)).transpose(0, 3, 1, 2))
    else:
        x = rng.standard_normal((4, 3, 12, 6))[:, :, ::2]
    w, b = rng.standard_normal((5, 3, 3, 3)), rng.standard_normal(5)
    check_op("conv2d (blocked, layouts)", lambda *a: F.conv2d(*a, padding=1),
             lambda *a: torch_conv_ref(*a, padding=1), [x, w, b], np.float64)


def test_inputs_changed_after_forward_do_not_change_gradients(blocking):
    """Without version counters, ops must save copies, not the caller's arrays: an
    unpadded conv of a channels-last input, a 1x1 conv, and max pooling."""
    blocking(2)
    rng = np.random.default_rng(9)
    for op in (lambda x, w: F.conv2d(x, w), lambda x, w: F.max_pool2d(F.conv2d(x, w[:, :, :1, :1]), 2)):
        x0 = np.ascontiguousarray(rng.standard_normal((2, 4, 4, 3)).transpose(0, 3, 1, 2))
        w0 = rng.standard_normal((2, 3, 3, 3))
        grads = []
        for change in (False, True):
            x, w = cnnlab.Tensor(x0.copy(), requires_grad=True), cnnlab.Tensor(w0.copy(), requires_grad=True)
            out = op(x, w)
            if change:
                x.data *= -2
                w.data *= 3
            out.backward(np.ones(out.shape))
            grads.append((x.grad, w.grad))
        for a, b in zip(*grads):
            np.testing.assert_array_equal(a, b)
    x = cnnlab.Tensor(rng.standard_normal((1, 1, 4, 4)), requires_grad=True)
    y = F.max_pool2d(x, 2)
    x.data *= -1
    y.data += 1
    y.backward(np.ones(y.shape))
    assert x.grad.sum() == 4


class FakeBLAS:
    """Stands in for a threadpoolctl controller: records the thread counts it is given."""

    def __init__(self, n):
        self.n = n

    def get_num_threads(self):
        return self.n

    def set_num_threads(self, n):
        self.n = n


def test_blas_threads_restored_after_errors_and_overlapping_calls(blocking, monkeypatch):
    blocking(2)
    blas = FakeBLAS(8)
    monkeypatch.setattr(parallel, "_blas_controllers", lambda: [blas])
    seen = []

    def fn(lo, hi, acc):
        seen.append(blas.n)
        if lo == 1:
            raise KeyError("block 1")

    with pytest.raises(KeyError, match="block 1"):
        parallel.run([(0, 1), (1, 2), (2, 3), (3, 4)], fn)
    # thread 0 ran blocks 0 and 2; thread 1 stopped at block 1; BLAS held to one thread, then restored
    assert seen == [1, 1, 1] and blas.n == 8

    # two threads inside at once: the count is restored once, when the last one leaves
    import threading
    inside, release = threading.Barrier(2), threading.Event()

    def hold(lo, hi, acc):
        inside.wait()
        release.wait()

    # a single block whose product BLAS would thread but which is too small to pay for it
    t = threading.Thread(target=lambda: parallel.run([(0, 1)], hold, flops=2 * parallel.BLAS_THREADS_MNK))
    t.start()
    with parallel._blas_limited():
        inside.wait()
        assert blas.n == 1
    assert blas.n == 1     # the other thread is still inside
    release.set()
    t.join()
    assert blas.n == 8
    # elementwise passes leave BLAS alone, and so do products BLAS would not thread
    parallel.run([(0, 1), (1, 2)], lambda lo, hi, acc: seen.append(blas.n), blas=False)
    parallel.run([(0, 1)], lambda lo, hi, acc: seen.append(blas.n), flops=2 * parallel.BLAS_THREADS_MNK - 1)
    assert seen[-3:] == [8, 8, 8]


def test_first_exception_in_thread_order_is_raised(blocking):
    blocking(2)

    def fn(lo, hi, acc):
        raise ValueError(f"block {lo}")

    with pytest.raises(ValueError, match="block 0"):
        parallel.run([(0, 1), (1, 2)], fn)


def test_workers_recover_after_an_exception_and_keep_thread_order(blocking):
    """A block that raises on a worker does not spoil the next runs; blocks go to
    threads statically, block i to thread i mod T."""
    blocking(3)
    for _ in range(3):
        with pytest.raises(ValueError, match="block 1"):
            parallel.run([(0, 1), (1, 2), (2, 3)], lambda lo, hi, acc: lo and (_ for _ in ()).throw(ValueError(f"block {lo}")))
        names = parallel.run([(i, i + 1) for i in range(6)],
                             lambda lo, hi, acc: parallel.add_to(acc, "b", [(lo, threading.current_thread().name)]))
        assert [[b for b, _ in acc["b"]] for acc in names] == [[0, 3], [1, 4], [2, 5]]
        assert len({name for acc in names for _, name in acc["b"]}) == 3


def test_runs_from_several_threads_at_once_give_the_same_bits(blocking):
    """Two user threads running blocked convolutions at once: one gets the workers, the
    other does every thread's share itself, in the same order, so both get exactly the
    single-threaded caller's result."""
    blocking(2, per_block=4096)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((6, 3, 9, 9)), rng.standard_normal((4, 3, 3, 3))

    def conv():
        xt = cnnlab.Tensor(x, requires_grad=True)
        wt = cnnlab.Tensor(w, requires_grad=True)
        out = F.conv2d(xt, wt, padding=1)
        (out * out).sum().backward()
        return out.data.copy(), xt.grad, wt.grad

    want = conv()
    results, errors = [], []

    def loop():
        try:
            results.extend(conv() for _ in range(30))
        except BaseException as e:  # noqa: B036 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=loop) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 90
    for got in results:
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_set_num_threads_ends_the_old_workers(blocking):
    """Changing the thread count ends the idle workers; the next run starts new ones."""
    def workers():
        return sum(t.name.startswith("cnnlab-") and t.is_alive() for t in threading.enumerate())

    def settle(n):
        for _ in range(200):
            if workers() == n:
                return n
            time.sleep(0.01)
        return workers()

    blocking(4)
    parallel.run([(i, i + 1) for i in range(4)], lambda lo, hi, acc: None)
    assert settle(3) == 3     # one pool: the calling thread and three workers
    parallel.set_num_threads(2)
    assert settle(0) == 0
    out = parallel.run([(i, i + 1) for i in range(4)], lambda lo, hi, acc: parallel.add_to(acc, "n", 1))
    assert [acc["n"] for acc in out] == [2, 2] and settle(1) == 1


def test_a_run_that_finds_the_workers_busy_runs_inline_with_the_same_bits(blocking):
    blocking(2, per_block=4096)
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((6, 3, 9, 9)), rng.standard_normal((4, 3, 3, 3))

    def conv():
        xt, wt = cnnlab.Tensor(x, requires_grad=True), cnnlab.Tensor(w, requires_grad=True)
        (F.conv2d(xt, wt, padding=1) ** 2).sum().backward()
        return xt.grad, wt.grad

    want = conv()
    pool = parallel._get_pool()
    assert pool.busy.acquire(blocking=False)     # as if another thread's run had the workers
    try:
        got = conv()
    finally:
        pool.busy.release()
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_a_run_on_workers_ended_meanwhile_runs_inline_instead_of_hanging(blocking, monkeypatch):
    """set_num_threads from another thread can end the workers between a run fetching
    the pool and taking it; the run must notice instead of waiting for them forever."""
    blocking(3)
    stale = parallel._get_pool()
    parallel.set_num_threads(2)                  # retires (and stops) the pool fetched above
    assert stale.retired
    monkeypatch.setattr(parallel, "_get_pool", lambda: stale)
    result = []
    t = threading.Thread(target=lambda: result.append(
        parallel.run([(i, i + 1) for i in range(4)], lambda lo, hi, acc: parallel.add_to(acc, "n", 1))))
    t.daemon = True
    t.start()
    t.join(10)
    assert not t.is_alive(), "the run waited for workers that no longer exist"
    assert [acc["n"] for acc in result[0]] == [2, 2]


def test_nested_run_runs_inline(blocking):
    blocking(2)
    out = np.zeros(16)

    def inner(lo, hi, acc):
        out[lo:hi] += 1

    def outer(lo, hi, acc):
        parallel.run([(lo, lo + 1), (lo + 1, hi)], inner)

    parallel.run([(0, 8), (8, 16)], outer)
    assert (out == 1).all()


def test_blocks_cover_the_batch(blocking):
    blocking(3)
    for n in (1, 2, 5, 7):
        bl = parallel.blocks(n, 10, 10)
        assert bl[0][0] == 0 and bl[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bl, bl[1:]))
        assert len(bl) >= min(n, 3)


def test_blocks_hold_at_least_the_minimum_flops_but_one_block_per_thread(blocking):
    blocking(2, per_block=3000)
    parallel.MIN_BLOCK_FLOPS = 7000                    # the fixture restores it
    item = 1000                                        # three items fill a block by bytes
    assert [hi - lo for lo, hi in parallel.blocks(128, 1, item)][:2] == [3, 3]
    flops = 1000                                       # but seven are needed by flops
    assert [hi - lo for lo, hi in parallel.blocks(128, 1, item, flops)][:2] == [7, 7]
    assert parallel.blocks(6, 1, item, flops) == [(0, 3), (3, 6)]   # still one block per thread
    for n, per in ((128, 7), (128, 3), (100, 7)):                  # block i runs on thread i mod 2
        bl = parallel.blocks(n, 1, 1000, 7000 // per)
        assert len(bl) % 2 == 0 and min(hi - lo for lo, hi in bl) >= per
        assert [sum(hi - lo for lo, hi in bl[t::2]) for t in (0, 1)] == [n // 2, n // 2]
    for n in (1, 2, 9, 128):
        bl = parallel.blocks(n, 1, item, flops)
        assert bl[0][0] == 0 and bl[-1][1] == n and all(a[1] == b[0] for a, b in zip(bl, bl[1:]))


def test_workers_let_go_of_a_finished_run(blocking):
    """A worker drops its last job, and with it the arrays the job's closures hold, once
    the job is done: a convolution's input gradient, which the input (a leaf) then keeps
    without a copy (autograd._sole_owner), or frees when nothing needs it."""
    blocking(2)
    rng = np.random.default_rng(0)
    x = cnnlab.Tensor(rng.standard_normal((4, 3, 6, 6), dtype=np.float32), requires_grad=True)
    w = cnnlab.Tensor(rng.standard_normal((5, 3, 3, 3), dtype=np.float32), requires_grad=True)
    F.conv2d(x, w, padding=1).sum().backward()
    assert x.grad.base is not None and x.grad.base.flags.c_contiguous    # kept, not copied
    big = np.ones(1000)
    alive = weakref.ref(big)

    def block(lo, hi, acc, held=big):     # the function itself holds the array
        acc["n"] = held.size
    assert [a["n"] for a in parallel.run([(0, 1), (1, 2)], block)] == [1000, 1000]
    del block, big
    assert alive() is None


@pytest.mark.parametrize("channels, filters", [(2, 6), (16, 16)], ids=["planes", "by_rows"])
def test_conv_input_gradient_keeps_the_input_layout_and_a_wider_dtype(blocking, channels, filters):
    """The input gradient lies in memory as the input does (channels-last input:
    channels-last gradient, as PyTorch gives), whichever path ran, and a float64 upstream
    gradient gives float64 gradients on every path."""
    blocking(2)
    rng = np.random.default_rng(3)
    x = np.ascontiguousarray(rng.standard_normal((3, 12, 12, channels), dtype=np.float32)).transpose(0, 3, 1, 2)
    w = rng.standard_normal((filters, channels, 3, 3), dtype=np.float32)
    g = rng.standard_normal((3, filters, 12, 12))
    xt, wt = cnnlab.Tensor(x, requires_grad=True), cnnlab.Tensor(w, requires_grad=True)
    y = F.conv2d(xt, wt, padding=1)
    (y + cnnlab.Tensor(np.zeros(y.shape))).backward(g)                              # float64 from here on
    assert xt.grad.strides[1] == xt.grad.itemsize                                     # channels-last memory
    assert xt.grad.dtype == np.float64 and wt.grad.dtype == np.float64
    ref_x, ref_w = (torch.from_numpy(a.astype(np.float64)).requires_grad_() for a in (x, w))
    torch.nn.functional.conv2d(ref_x, ref_w, padding=1).backward(torch.from_numpy(g))
    np.testing.assert_allclose(xt.grad, ref_x.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(wt.grad, ref_w.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_workspace_is_reused_per_slot_and_large_arrays_are_not_kept():
    a = parallel.workspace(5, (4, 4), np.float32)
    b = parallel.workspace(5, (2, 8), np.float32)
    assert np.shares_memory(a, b)
    assert not np.shares_memory(a, parallel.workspace(6, (4, 4), np.float32))
    big = parallel.workspace(5, (parallel.WORKSPACE_KEEP_BYTES // 8 + 1,), np.float64)
    assert not np.shares_memory(big, parallel.workspace(5, (4, 4), np.float32))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_num_threads_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="positive int"):
        parallel.set_num_threads(bad)


def test_batch_norm_eval_backward_on_an_empty_batch_warns_nothing():
    import warnings
    x = cnnlab.Tensor(np.zeros((0, 3, 2, 2)), requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = F.batch_norm(x, np.zeros(3), np.ones(3), np.ones(3), np.zeros(3), training=False)
        out.backward(np.zeros(out.shape))
    assert x.grad.shape == (0, 3, 2, 2)


# ----- memory layout: channels-last carries through residual sums and their gradients -----
def _channels_last(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def _is_channels_last(a):
    return a.strides[1] == a.itemsize and a.strides[3] == a.shape[1] * a.itemsize


class _Spy(cnnlab.autograd.Function):
    """Identity that records the gradient it is handed."""
    seen = []

    @staticmethod
    def forward(ctx, a):
        return a

    @staticmethod
    def backward(ctx, g):
        _Spy.seen.append(g)
        return (g,)


@pytest.mark.parametrize("threads", [1, 3])
def test_residual_sum_and_its_gradient_keep_the_value_layout(blocking, threads):
    """x (channels-last) reaches the loss along two paths, one of which hands back a
    C-contiguous gradient: the sum and the accumulated gradient are channels-last like x,
    and the values equal PyTorch's, split over threads or not."""
    blocking(threads)
    rng = np.random.default_rng(0)
    x0 = _channels_last(rng.standard_normal((4, 3, 5, 6)))
    y0, up = rng.standard_normal((2, 4, 3, 5, 6))
    x, y = cnnlab.Tensor(x0, requires_grad=True), cnnlab.Tensor(y0, requires_grad=True)
    _Spy.seen.clear()
    xs = _Spy.apply(x)
    s = xs + y                                                 # y is C-contiguous
    assert _is_channels_last(s.data)
    out = s * 2 + xs.reshape(4, -1).reshape(4, 3, 5, 6)      # this path's gradient comes back in C order
    out.backward(up)
    assert _is_channels_last(_Spy.seen[0])
    tx, ty = torch.tensor(x0, requires_grad=True), torch.tensor(y0, requires_grad=True)
    ((tx + ty) * 2 + tx).backward(torch.tensor(up))
    np.testing.assert_allclose(s.data, (tx + ty).detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(y.grad, ty.grad.numpy(), rtol=1e-12)


def test_cat_and_mean_keep_the_input_layout():
    x0 = _channels_last(np.random.default_rng(3).standard_normal((2, 3, 4, 5)))
    x = cnnlab.Tensor(x0, requires_grad=True)
    c = cnnlab.cat([x, cnnlab.Tensor(np.zeros((2, 2, 4, 5)))], dim=1)
    assert _is_channels_last(c.data)
    np.testing.assert_array_equal(c.data[:, :3], x0)
    _Spy.seen.clear()
    m = _Spy.apply(x).mean((2, 3))
    m.backward(np.ones(m.shape))
    assert _is_channels_last(_Spy.seen[0])
    np.testing.assert_allclose(_Spy.seen[0], np.full(x0.shape, 1 / 20))
    _Spy.seen.clear()
    s = _Spy.apply(x).sum((1, 3))                                    # sum: the same, and clone keeps it
    s.backward(np.arange(8.0).reshape(2, 4))
    assert _is_channels_last(_Spy.seen[0]) and _is_channels_last(x.clone().data)
    np.testing.assert_array_equal(_Spy.seen[0], np.broadcast_to(np.arange(8.0).reshape(2, 1, 4, 1), x0.shape))


# ----- batch norm's Numba kernels (kernels.jit) against PyTorch, and the NumPy passes beside them -----
def _channels_last_of(a):
    """``a`` as a view of memory with axis 1 (channels) innermost, as a convolution leaves it."""
    order = (0,) + tuple(range(2, a.ndim)) + (1,)
    return np.ascontiguousarray(a.transpose(order)).transpose(np.argsort(order))


class _ToChannelsLast(cnnlab.autograd.Function):
    """Identity whose output lies channels-last in memory (check_op hands C-ordered copies)."""
    @staticmethod
    def forward(ctx, a):
        return _channels_last_of(a)

    @staticmethod
    def backward(ctx, g):
        return (g,)


@pytest.mark.parametrize("path", ["numpy", "numba"])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("shape", [(5, 3, 4, 4), (4, 2, 6), (7, 4)])
def test_batch_norm_channels_last_kernels_match_torch(blocking, monkeypatch, path, threads, shape, dtype):
    from cnnlab.functional import normalization
    from cnnlab.kernels import jit
    if path == "numba":
        if not jit.available():
            pytest.skip("Numba is not installed (the fast extra)")
    else:
        monkeypatch.setattr(normalization, "_jit_kernels", lambda x: None)
    calls = []
    forward_jit = normalization._forward_jit
    monkeypatch.setattr(normalization, "_forward_jit", lambda *a: calls.append(1) or forward_jit(*a))
    blocking(threads)
    rng = np.random.default_rng(4)
    c = shape[1]
    x = rng.standard_normal(shape) * 3 + 1
    w, b = rng.standard_normal(c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.random(c) + 0.5
    stats = {}

    def ours(x, w, b):
        m, v = rm.astype(dtype), rv.astype(dtype)
        out = F.batch_norm(_ToChannelsLast.apply(x), m, v, w, b, training=True, momentum=0.3)
        stats["ours"] = (m, v)
        return out

    def theirs(x, w, b):
        m, v = torch.tensor(rm.astype(dtype)), torch.tensor(rv.astype(dtype))
        out = torch.nn.functional.batch_norm(x, m, v, w, b, training=True, momentum=0.3)
        stats["theirs"] = (m.numpy(), v.numpy())
        return out

    check_op("batch_norm (channels-last, " + path + ")", ours, theirs, [x, w, b], dtype)
    for a, t in zip(stats["ours"], stats["theirs"]):
        np.testing.assert_allclose(a, t, rtol=1e-10 if dtype == np.float64 else 1e-5)
    assert len(calls) == (path == "numba")


def _batch_norm_path(monkeypatch, path: str) -> None:
    """Batch norm's "numba" loops (skipped where Numba is not installed) or its "numpy" passes."""
    from cnnlab.functional import normalization
    from cnnlab.kernels import jit
    if path == "numba" and not jit.available():
        pytest.skip("Numba is not installed (the fast extra)")
    if path == "numpy":
        monkeypatch.setattr(normalization, "_jit_kernels", lambda x: None)


@pytest.mark.parametrize("path", ["numpy", "numba"])
@pytest.mark.parametrize("mode", ["train", "eval", "eval, no grad"])
@pytest.mark.parametrize("layout", ["channels-last", "NCHW", "(N, C)"])
def test_batch_norm_fused_relu_matches_torch(blocking, monkeypatch, path, mode, layout, dtype):
    """batch_norm(relu=True) against torch's relu(batch_norm) on every path: the Numba
    loops (training, channels-last), the NumPy passes, and evaluation folded into one
    scale and shift; about half the outputs are cut to 0 (beta near 0)."""
    _batch_norm_path(monkeypatch, path)
    blocking(2)
    rng = np.random.default_rng(5)
    shape = (6, 4) if layout == "(N, C)" else (5, 4, 3, 6)
    x = rng.standard_normal(shape) * 2 + 0.5
    w, b = rng.standard_normal(4), 0.1 * rng.standard_normal(4)
    rm, rv = rng.standard_normal(4) * 0.3, rng.random(4) + 0.5
    training = mode == "train"
    to_layout = _ToChannelsLast.apply if layout == "channels-last" else (lambda t: t)

    def ours(x, w, b):
        return F.batch_norm(to_layout(x), rm.astype(dtype), rv.astype(dtype), w, b, training=training, relu=True)

    def theirs(x, w, b):
        return torch.relu(torch.nn.functional.batch_norm(x, torch.tensor(rm.astype(dtype)),
                                                         torch.tensor(rv.astype(dtype)), w, b, training=training))

    if mode == "eval, no grad":
        with cnnlab.no_grad():
            got = ours(*(cnnlab.Tensor(a.astype(dtype)) for a in (x, w, b))).data
        want = theirs(*(torch.tensor(a.astype(dtype)) for a in (x, w, b))).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-10 if dtype == np.float64 else 1e-5, atol=1e-6)
    else:
        got = check_op("batch_norm relu=True (" + path + ")", ours, theirs, [x, w, b], dtype)[0][0].data
    assert 0.2 < np.mean(got == 0) < 0.8


@pytest.mark.parametrize("path", ["numpy", "numba"])
@pytest.mark.parametrize("mode", ["train", "eval", "eval, no grad"])
@pytest.mark.parametrize("layout", ["channels-last", "NCHW", "residual NCHW"])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "norelu"])
def test_batch_norm_with_a_residual_matches_torch(blocking, monkeypatch, path, mode, layout, relu, dtype):
    """batch_norm(residual=r, relu=...) against torch's relu(batch_norm(x) + r), values and
    the gradients of x, gamma, beta and r, on every path; the residual laid out like x or
    not (``residual NCHW``: x channels-last, r not)."""
    _batch_norm_path(monkeypatch, path)
    blocking(2)
    rng = np.random.default_rng(15)
    x, r = rng.standard_normal((5, 4, 3, 6)) * 2 + 0.5, rng.standard_normal((5, 4, 3, 6))
    w, b = rng.standard_normal(4), 0.1 * rng.standard_normal(4)
    rm, rv = rng.standard_normal(4) * 0.3, rng.random(4) + 0.5
    training = mode == "train"
    x_layout = (lambda t: t) if layout == "NCHW" else _ToChannelsLast.apply
    r_layout = _ToChannelsLast.apply if layout == "channels-last" else (lambda t: t)

    def ours(x, w, b, r):
        return F.batch_norm(x_layout(x), rm.astype(dtype), rv.astype(dtype), w, b, training=training, relu=relu,
                            residual=r_layout(r))

    def theirs(x, w, b, r):
        out = torch.nn.functional.batch_norm(x, torch.tensor(rm.astype(dtype)), torch.tensor(rv.astype(dtype)),
                                             w, b, training=training) + r
        return torch.relu(out) if relu else out

    if mode == "eval, no grad":
        with cnnlab.no_grad():
            got = ours(*(cnnlab.Tensor(a.astype(dtype)) for a in (x, w, b, r))).data
        want = theirs(*(torch.tensor(a.astype(dtype)) for a in (x, w, b, r))).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-10 if dtype == np.float64 else 1e-5, atol=1e-6)
    else:
        got = check_op("batch_norm residual (" + path + ")", ours, theirs, [x, w, b, r], dtype)[0][0].data
        check_op("batch_norm residual (" + path + ")", ours, theirs, [x, w, b, r], dtype,
                 requires_grad=[False, False, False, True])
    if relu:
        assert 0.2 < np.mean(got == 0) < 0.8


@pytest.mark.parametrize("affine", ["float32", "float64", "zero"])
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "plain"])
@pytest.mark.parametrize("path", ["numpy", "numba"])
def test_batch_norm_fused_relu_is_bit_identical_to_the_separate_layers(monkeypatch, path, residual, affine):
    """relu(batch_norm(x) [+ r]) fused and separate, bit for bit, signs of zero included:
    gamma and beta in x's dtype, in float64 (which batch_norm accepts: both paths round
    as float32 arithmetic would), and gamma = 0 with beta = -0.0 (outputs of -0.0 before
    the ReLU, which np.maximum turns into +0.0)."""
    _batch_norm_path(monkeypatch, path)
    rng = np.random.default_rng(17)
    x = _channels_last_of(rng.standard_normal((4, 3, 5, 5)).astype(np.float32))
    r = _channels_last_of(rng.standard_normal((4, 3, 5, 5)).astype(np.float32) * (affine != "zero"))
    w, b = {"float32": (np.array([0.7, 1.3, -0.9], np.float32), np.array([0.31, -0.17, 0.05], np.float32)),
            "float64": (np.array([0.7, 1.3, -0.9]), np.array([0.31, -0.17, 0.05])),
            "zero": (np.zeros(3, np.float32), np.full(3, -0.0, np.float32))}[affine]
    g = _channels_last_of(rng.standard_normal(x.shape).astype(np.float32))
    results = []
    for fused in (True, False):
        xt, wt, bt = (cnnlab.Tensor(a, requires_grad=True) for a in (x, w, b))
        rt = cnnlab.Tensor(r, requires_grad=True) if residual else None
        if fused:
            out = F.batch_norm(xt, None, None, wt, bt, training=True, relu=True, residual=rt)
        else:
            out = F.batch_norm(xt, None, None, wt, bt, training=True)
            out = F.relu(out + rt if residual else out)
        out.backward(g)
        results.append([out.data, np.signbit(out.data)] + [t.grad for t in (xt, wt, bt, rt) if t is not None])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("path", ["numpy", "numba"])
def test_batch_norm_with_a_residual_is_bit_identical_to_the_sum_and_relu_even_for_inf_and_nan(monkeypatch, path):
    _batch_norm_path(monkeypatch, path)
    rng = np.random.default_rng(16)
    x = _channels_last_of(rng.standard_normal((4, 3, 5, 5)).astype(np.float32))
    r = _channels_last_of(rng.standard_normal((4, 3, 5, 5)).astype(np.float32))
    results = []
    for fused in (True, False):
        # gamma and beta not 1 and 0, so a sum rounded in another order would show
        ts = [cnnlab.Tensor(a, requires_grad=True) for a in (x, r, np.array([0.7, 1.3, -0.9], np.float32),
                                                             np.array([0.31, -0.17, 0.05], np.float32))]
        xt, rt, w, b = ts
        out = (F.batch_norm(xt, None, None, w, b, training=True, relu=True, residual=rt) if fused
               else F.relu(F.batch_norm(xt, None, None, w, b, training=True) + rt))
        g = np.ones(out.shape, np.float32)
        g.reshape(-1)[::3] = np.inf
        g.reshape(-1)[1::5] = np.nan
        with np.errstate(invalid="ignore"):
            out.backward(_channels_last_of(g))
        results.append([out.data] + [t.grad for t in ts])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_batch_norm_residual_of_the_wrong_shape_is_refused():
    x = cnnlab.Tensor(np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"batch_norm: residual must have the input's shape \(2, 3, 4, 4\)"):
        F.batch_norm(x, None, None, training=True, residual=np.zeros((2, 3, 4, 5), np.float32))


def test_batch_norm_relu_fused_in_sequential_and_residual_blocks_is_bit_identical(monkeypatch):
    """nn.Sequential (BatchNorm2d then ReLU) and the residual blocks fuse, the blocks'
    last batch norm with the residual sum too; the values and gradients are exactly those
    of the unfused layers."""
    from cnnlab import nn
    from cnnlab.nn import module
    cnnlab.manual_seed(0)
    nets = [nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
            nn.BasicBlock(4, 4, 1, "identity"), nn.Bottleneck(4, 2, 1, "auto")]
    x = np.random.default_rng(6).standard_normal((3, 3, 6, 6)).astype(np.float32)
    fuse, fused_calls = module._fuses_relu, []

    def counting(m, nxt):
        ok = fuse(m, nxt)
        fused_calls.append(ok and isinstance(m, nn.BatchNorm2d))
        return ok

    results = {}
    for name, rule in (("fused", counting), ("unfused", lambda m, nxt: False)):
        monkeypatch.setattr(module, "_fuses_relu", rule)
        h = cnnlab.Tensor(x, requires_grad=True)
        for net in nets:
            h = net(h)
        (h * h).sum().backward()
        results[name] = [h.data.copy()] + [p.grad.copy() for net in nets for p in net.parameters()]
        for net in nets:
            for p in net.parameters():
                p.grad = None
    assert sum(fused_calls) == 6   # Sequential 1, BasicBlock 2, Bottleneck 3 (the last with the residual)
    for a, b in zip(results["fused"], results["unfused"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("path", ["numpy", "numba"])
@pytest.mark.parametrize("where", ["cut", "kept"])
def test_batch_norm_fused_relu_gradient_is_the_separate_relus_even_for_inf_and_nan(monkeypatch, path, where):
    _batch_norm_path(monkeypatch, path)
    x = _channels_last_of(np.random.default_rng(8).standard_normal((4, 3, 5, 5)).astype(np.float32))
    results = []
    for fused in (True, False):
        xt = cnnlab.Tensor(x, requires_grad=True)
        w, b = cnnlab.Tensor(np.ones(3, np.float32), requires_grad=True), cnnlab.Tensor(np.zeros(3, np.float32),
                                                                                       requires_grad=True)
        out = (F.batch_norm(xt, None, None, w, b, training=True, relu=True) if fused
               else F.relu(F.batch_norm(xt, None, None, w, b, training=True)))
        # inf and NaN where the ReLU output 0: a separate ReLU passes them on as NaN
        # (inf * 0), and so the batch norm's sums become NaN, which the fused one must match
        cut = np.flatnonzero((out.data.reshape(-1) == 0) == (where == "cut"))
        g = np.ones(out.shape, np.float32)
        g.reshape(-1)[cut[::2]] = np.inf
        g.reshape(-1)[cut[1::4]] = np.nan
        with np.errstate(invalid="ignore"):
            out.backward(_channels_last_of(g))
        results.append((out.data, xt.grad, w.grad, b.grad))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("path", ["numpy", "numba"])
def test_batch_norm_fused_relu_gradient_where_the_output_before_the_relu_is_exactly_zero(monkeypatch, path):
    """Where x_hat * gamma + beta is exactly 0 (gamma and beta 0 in channel 0; in channel
    1, values equal to their channel's mean), the ReLU's gradient is 0, as the separate
    ReLU's: the compiled backward recomputes that output from x_hat, gamma and beta
    rather than keep it, and must round exactly as the forward pass did."""
    _batch_norm_path(monkeypatch, path)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    x[:, 1, :2] = 0.0                                   # exactly the channel's mean, which is 0:
    x[:, 1, 2], x[:, 1, 3], x[:, 1, 4] = 2.0, -2.0, [2.0, -2.0, 2.0, -2.0, 0.0]
    x = _channels_last_of(x)
    results = []
    for fused in (True, False):
        xt = cnnlab.Tensor(x, requires_grad=True)
        w = cnnlab.Tensor(np.array([0.0, 1.5, -0.7], np.float32), requires_grad=True)
        b = cnnlab.Tensor(np.array([0.0, 0.0, 0.1], np.float32), requires_grad=True)
        out = (F.batch_norm(xt, None, None, w, b, training=True, relu=True) if fused
               else F.relu(F.batch_norm(xt, None, None, w, b, training=True)))
        out.backward(_channels_last_of(np.random.default_rng(10).standard_normal(out.shape).astype(np.float32)))
        results.append((out.data, xt.grad, w.grad, b.grad))
    assert (results[1][0][:, 0] == 0).all() and (results[1][0][:, 1, :2] == 0).all()
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_cnnlab_jit_0_switches_the_numba_kernels_off(monkeypatch):
    from cnnlab.kernels import jit
    monkeypatch.setenv("CNNLAB_JIT", "0")
    assert not jit.available()


def test_numba_that_fails_to_build_warns_and_leaves_numpy(monkeypatch):
    from cnnlab.kernels import jit
    if not jit.available():
        pytest.skip("Numba is not installed (the fast extra)")
    monkeypatch.setattr(jit, "_kernels", None)

    def broken():
        raise RuntimeError("LLVM is unhappy")
    monkeypatch.setattr(jit, "_build", broken)
    with pytest.warns(RuntimeWarning, match="LLVM is unhappy"):
        assert jit.kernels() is None
    x = cnnlab.Tensor(np.random.default_rng(0).standard_normal((4, 3)), requires_grad=True)
    F.batch_norm(x, None, None, training=True).sum().backward()   # on NumPy
    assert x.grad.shape == (4, 3)


def test_numba_without_a_writable_cache_compiles_uncached():
    """A read-only install with an unwritable home: Numba refuses cache=True, so the
    kernels are compiled per process instead (in a fresh process, as the cache decision
    is made once)."""
    import subprocess
    import sys
    from cnnlab.kernels import jit
    if not jit.available():
        pytest.skip("Numba is not installed (the fast extra)")
    code = ("import numba.core.caching as c\n"
            "def deny(self): raise PermissionError('read-only')\n"
            "c._CacheLocator.ensure_cache_path = deny\n"
            "import numpy as np, cnnlab\n"
            "from cnnlab.kernels import jit\n"
            "x = cnnlab.Tensor(np.ones((4, 3), np.float32), requires_grad=True)\n"
            "cnnlab.functional.batch_norm(x, None, None, training=True).sum().backward()\n"
            "print(jit.kernels() is not None)\n")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_importing_cnnlab_and_inference_do_not_import_numba():
    """Numba's import alone costs a third of a second: cold-start inference must not pay it."""
    import subprocess
    import sys
    code = ("import sys, numpy as np, cnnlab\n"
            "m = cnnlab.models.create('resnet20', (3, 8, 8), 10); m.eval()\n"
            "with cnnlab.no_grad(): m(np.zeros((1, 3, 8, 8), np.float32))\n"
            "print('numba' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


POOL_CASES = {  # kernel, stride, padding, dilation, ceil_mode
    "2x2 tiles": ((2, 2), None, 0, 1, False),
    "3x3 stride 2 overlapping, padded": ((3, 3), 2, 1, 1, False),
    "dilated, ceil mode": ((2, 3), (1, 2), (1, 1), 2, True),
    "odd size leaves a gap": ((2, 2), 3, 0, 1, False),
}


@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
@pytest.mark.parametrize("path", ["numpy", "numba"])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("case", list(POOL_CASES))
@pytest.mark.parametrize("values", ["random", "ties and NaN", "-inf"])
def test_pool_kernels_match_torch(blocking, monkeypatch, op, layout, path, threads, case, values, dtype):
    """The compiled loops (along channels for channels-last memory, along rows for
    NCHW memory) and NumPy's passes, for max and average pooling."""
    from cnnlab.functional import pooling
    if op == "avg" and POOL_CASES[case][3] != 1:
        pytest.skip("average pooling has no dilation")
    from cnnlab.kernels import jit
    if path == "numba" and not jit.available():
        pytest.skip("Numba is not installed (the fast extra)")
    chooser = "_jit_kernels" if layout == "channels_last" else "_jit_planes"
    if path == "numpy":
        monkeypatch.setattr(pooling, chooser, lambda x: None)
    seen = []
    choose = getattr(pooling, chooser)
    monkeypatch.setattr(pooling, chooser, lambda x: seen.append(choose(x) is not None) or choose(x))
    empty_in_order = pooling.empty_in_order

    def poisoned_empty(shape, order, dtype, zeros=False):   # garbage where a kernel skips an element
        a = empty_in_order(shape, order, dtype, zeros)
        if not zeros:
            a[...] = np.nan if np.dtype(dtype).kind == "f" else 77
        return a

    monkeypatch.setattr(pooling, "empty_in_order", poisoned_empty)
    blocking(threads)
    kernel, stride, padding, dilation, ceil_mode = POOL_CASES[case]
    rng = np.random.default_rng(5)
    shape = ((3, pooling.JIT_MIN_CHANNELS + 1, 8, 6) if layout == "channels_last"
             else (3, 2, 7, pooling.JIT_MIN_WIDTH + 3))
    if values == "random":
        x = rng.standard_normal(shape)
    elif values == "ties and NaN":  # few distinct values (the first maximum wins); the last NaN wins
        x = rng.integers(0, 3, shape).astype(float)
        x[rng.random(shape) < 0.1] = np.nan
    else:  # windows whose real values are all -inf: PyTorch picks their first real element, not padding
        x = np.where(rng.random(shape) < 0.85, -np.inf, rng.standard_normal(shape))
    args = (kernel, stride, padding, dilation, ceil_mode) if op == "max" else (kernel, stride, padding, ceil_mode)
    to_layout = _ToChannelsLast.apply if layout == "channels_last" else (lambda x: x)
    ours, theirs = getattr(F, f"{op}_pool2d"), getattr(torch.nn.functional, f"{op}_pool2d")
    check_op(f"{op}_pool2d ({layout}, {path})", lambda x: ours(to_layout(x), *args),
             lambda x: theirs(x, *args), [x], dtype)
    # channels-first max pooling takes the compiled loops only where windows overlap
    def two(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    overlap = pooling._overlaps(two(kernel), two(stride or kernel), two(dilation))
    compiled = path == "numba" and (op == "avg" or layout == "channels_last" or overlap)
    assert any(seen) == compiled


def test_reuse_freed_memory_stops_page_faults_on_repeated_big_arrays():
    """In a fresh process: a "step" that writes four new 8 MiB arrays and frees them
    faults in thousands of fresh pages every time by default (glibc trims the freed heap);
    after reuse_freed_memory the next steps reuse the pages."""
    import subprocess
    import sys
    code = (
        "import resource, sys, numpy as np, cnnlab\n"
        "def step():\n"
        "    arrays = [np.ones(2 << 20, np.float32) for _ in range(4)]\n"
        "def faults():\n"
        "    for _ in range(3): step()\n"   # warm up
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    for _ in range(10): step()\n"
        "    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10\n"
        "plain = faults()\n"
        "took = cnnlab.reuse_freed_memory()\n"
        "print(took, plain, faults())\n")
    if "malloc" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("another allocator is preloaded: glibc's mallopt does not govern it")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    if out[0] != "True":
        pytest.skip("not glibc: mallopt is unavailable")
    plain, reused = float(out[1]), float(out[2])
    assert plain > 1000 and reused < 50, (plain, reused)


def test_the_callers_errstate_holds_on_every_thread(blocking):
    """np.errstate is a context variable: the blocks run on cnnlab's threads must see the
    caller's, or an overflow the caller silenced warns from a worker (or one it made an
    error passes silently)."""
    blocking(3)
    x = np.full((6, 2, 4, 4), np.inf)
    w = np.ones((3, 2, 3, 3))
    w[:, 1] = -1                                                     # inf - inf in every window: NaN
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="ignore"):
            out = F.conv2d(cnnlab.Tensor(x), cnnlab.Tensor(w), padding=1)
    assert np.isnan(out.data).all()
    with np.errstate(invalid="raise"), pytest.raises(FloatingPointError):
        F.conv2d(cnnlab.Tensor(x), cnnlab.Tensor(w), padding=1)


# ----- linear layers' products (kernels.gemm) -----
@pytest.fixture
def split_products(blocking, monkeypatch):
    """Every product split over the threads (or, with ``split=False``, held on one)."""
    def configure(threads, split=True, controllable=True):
        blocking(threads, controllable=controllable)
        monkeypatch.setattr(parallel, "BLAS_THREADS_MNK", 0)
        monkeypatch.setattr(parallel, "SMALL_FLOPS", 0 if split else 10**18)
    return configure


@pytest.mark.parametrize("threads,split", [(1, True), (2, False), (2, True), (3, True)])
@pytest.mark.parametrize("xs", [(7, 4), (4,), (2, 5, 4), (1, 4), (0, 4)], ids=["2d", "1d", "3d", "one_row", "empty"])
def test_linear_on_threads_matches_torch(split_products, threads, split, xs, dtype):
    split_products(threads, split)
    rng = np.random.default_rng(13)
    arrays = [rng.standard_normal(xs), rng.standard_normal((3, 4)), rng.standard_normal(3)]
    import torch.nn.functional as TF
    check_op("linear (threads)", F.linear, TF.linear, arrays, dtype)


@pytest.mark.parametrize("threads,split", [(2, False), (3, True)])
@pytest.mark.parametrize("shapes", [((7, 4), (4, 3)), ((1, 4), (4, 3)), ((0, 4), (4, 3))], ids=["2d", "one_row", "empty"])
def test_matrix_product_on_threads_matches_torch(split_products, threads, split, shapes, dtype):
    split_products(threads, split)
    rng = np.random.default_rng(16)
    check_op("matmul (threads)", lambda a, b: a @ b, lambda a, b: a @ b,
             [rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])], dtype)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_gemm_products_match_numpy(split_products, threads):
    from cnnlab.kernels import gemm
    split_products(threads)
    rng = np.random.default_rng(14)
    a, b, c = rng.standard_normal((11, 6)), rng.standard_normal((5, 6)), rng.standard_normal((11, 5))
    np.testing.assert_allclose(gemm.matmul(a, b.T), a @ b.T, rtol=1e-12)      # a transposed operand
    np.testing.assert_allclose(gemm.matmul_tn(a, c), a.T @ c, rtol=1e-12)     # a sum over the rows
    assert gemm.matmul(a[:0], b.T).shape == (0, 5) and not gemm.matmul_tn(a[:0], c[:0]).any()
    for rows in (1, 2):                                                    # fewer rows than threads: columns
        np.testing.assert_allclose(gemm.matmul(a[:rows], b.T), a[:rows] @ b.T, rtol=1e-12)
    np.testing.assert_allclose(gemm.matmul(a[:1], b[:1].T), a[:1] @ b[:1].T, rtol=1e-12)


def test_linear_products_hold_blas_to_one_thread(split_products, monkeypatch):
    """The reason kernels.gemm exists: a linear layer's products must not wake BLAS's own
    threads (which then spin and take cores from cnnlab's); too small ones are left alone."""
    from cnnlab.kernels import gemm
    blas = FakeBLAS(8)
    monkeypatch.setattr(parallel, "_blas_controllers", lambda: [blas])
    seen, run = [], parallel.run

    def spy(block_list, fn, *args, **kwargs):          # BLAS's threads as each block sees them
        def block(lo, hi, acc):
            seen.append(blas.n)
            fn(lo, hi, acc)
        return run(block_list, block, *args, **kwargs)

    monkeypatch.setattr(parallel, "run", spy)
    x, w = cnnlab.Tensor(np.ones((4, 6)), requires_grad=True), cnnlab.Tensor(np.ones((3, 6)), requires_grad=True)
    for threads, split in ((2, True), (2, False)):
        split_products(threads, split)
        seen.clear()
        F.linear(x, w).sum().backward()
        # forward, input gradient, weight gradient: each product's blocks, every one held
        assert len(seen) == (6 if split else 3) and set(seen) == {1}, (threads, split, seen)
        assert blas.n == 8                                                   # restored afterwards
    monkeypatch.setattr(parallel, "BLAS_THREADS_MNK", 10**9)                 # "too small": plain products
    seen.clear()
    assert gemm.matmul(np.ones((4, 6)), np.ones((6, 3))).shape == (4, 3) and seen == [] and blas.n == 8


def test_linear_without_threadpoolctl_uses_plain_products(split_products):
    split_products(2, controllable=False)
    from cnnlab.kernels import gemm
    assert gemm._plain(100, 100, 100)
    rng = np.random.default_rng(15)
    import torch.nn.functional as TF
    check_op("linear (threads)", F.linear, TF.linear, [rng.standard_normal((9, 4)), rng.standard_normal((3, 4))])


def test_a_model_call_holds_blas_once(blocking, monkeypatch):
    """Holding BLAS around each convolution of a batch-1 model cost 4% of a ResNet-20's
    time: inside a model call, the first hold lasts until the call ends."""
    blocking(2)
    monkeypatch.setattr(parallel, "BLAS_THREADS_MNK", 0)                 # every product held
    calls = []

    class Counting(FakeBLAS):
        def set_num_threads(self, n):
            calls.append(n)
            super().set_num_threads(n)

    blas = Counting(8)
    monkeypatch.setattr(parallel, "_blas_controllers", lambda: [blas])
    model = cnnlab.nn.Sequential(cnnlab.nn.Conv2d(2, 3, 3), cnnlab.nn.ReLU(), cnnlab.nn.Conv2d(3, 3, 3))
    x = np.ones((1, 2, 8, 8), np.float32)
    with cnnlab.no_grad():
        ref = model(x).data
        assert calls == [1, 8] and blas.n == 8
        calls.clear()
        model[0](x)                                                       # a layer alone: its own scope
        assert calls == [1, 8]
    calls.clear()

    class Failing(cnnlab.nn.Module):
        def forward(self, x):
            model(x)
            raise RuntimeError("after the convolutions")

    with cnnlab.no_grad(), pytest.raises(RuntimeError):
        Failing()(x)
    assert calls == [1, 8] and blas.n == 8                               # released on the way out
    # a product big enough for BLAS's own threads gives them back within the call
    big = cnnlab.nn.Sequential(cnnlab.nn.Conv2d(2, 3, 3), cnnlab.nn.Conv2d(3, 64, 3))
    flops = [2 * 36 * 18 * 3, 2 * 16 * 27 * 64]
    monkeypatch.setattr(parallel, "SMALL_FLOPS", (flops[0] + flops[1]) // 2)
    during, inline = [], parallel.inline       # where every single block runs
    monkeypatch.setattr(parallel, "inline", lambda fn, *a, **k: inline(
        lambda: during.append(blas.n) or fn(), *a, **k))
    calls.clear()
    with cnnlab.no_grad():
        big(x)
    assert during == [1, 8] and calls == [1, 8] and blas.n == 8
    monkeypatch.setattr(parallel, "inline", inline)
    # the scope changes nothing in the values
    monkeypatch.setattr(parallel, "_blas_controllers", lambda: [])
    with cnnlab.no_grad():
        np.testing.assert_array_equal(model(x).data, ref)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "circular"])
def test_padding_gradient_and_leaf_gradients_keep_the_layout(mode):
    """A transposing copy in the padding's adjoint took 80 ms of a 3x3/2 max pool's
    backward on a ResNet-50 stem: the gradient of a channels-last input stays
    channels-last, through the padding and into a leaf's .grad (as in PyTorch)."""
    from cnnlab.kernels import pad2d_backward
    rng = np.random.default_rng(18)
    g = np.ascontiguousarray(rng.standard_normal((2, 7, 8, 3))).transpose(0, 3, 1, 2)     # N C H W view
    pads = (1, 2, 2, 1)
    dx = pad2d_backward(g, (2, 3, 4, 5), pads, mode)
    assert dx.strides[1] == dx.itemsize                                               # still channels-last
    x = torch.zeros((2, 3, 4, 5), dtype=torch.float64, requires_grad=True)
    torch.nn.functional.pad(x, (2, 1, 1, 2), mode="constant" if mode == "zeros" else mode).backward(
        torch.from_numpy(np.ascontiguousarray(g)))
    np.testing.assert_allclose(dx, x.grad.numpy(), rtol=1e-12)
    leaf = cnnlab.Tensor(np.ascontiguousarray(rng.standard_normal((2, 6, 6, 3))).transpose(0, 3, 1, 2),
                         requires_grad=True)
    F.max_pool2d(leaf, 3, 2, 1).sum().backward()
    assert leaf.grad.strides[1] == leaf.grad.itemsize and leaf.grad.shape == (2, 3, 6, 6)
    t = torch.from_numpy(np.ascontiguousarray(leaf.data)).requires_grad_()
    torch.nn.functional.max_pool2d(t, 3, 2, 1).sum().backward()
    np.testing.assert_array_equal(leaf.grad, t.grad.numpy())
