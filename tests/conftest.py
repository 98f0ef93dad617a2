"""Shared test helpers.

``check_op`` is the one PyTorch-parity check, in the spirit of tinygrad's
``helper_test_op``: the same NumPy arrays go into a cnnlab op and its PyTorch
counterpart, the forward values are compared, then the *same random* upstream gradient
(never ``.sum()``, which would hide a transposed gradient) is pushed back through both
and the gradient of every input that requires one is compared, weights and biases
included.

The error measure is the relative error of the whole array,

    max |cnnlab - torch| / max(max |torch|, tiny),

allowed up to 1e-10 in float64 and 1e-4 in float32. The largest error seen per
(op, dtype) and the number of cases are recorded for the session and printed as a table
at the end of the run (workers of pytest-xdist send theirs to the controller).

Use it as a plain function (``from conftest import check_op``) or through the
``check_op`` fixture, which is session-scoped so it also works inside hypothesis tests.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import cnnlab

torch.set_num_threads(1)  # tiny tensors: threads only cost time, and pytest -n runs workers side by side

TOLERANCE = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
TORCH_DTYPE = {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}
TINY = np.finfo(np.float64).tiny

# (op name, dtype name) -> [cases, largest forward error, largest gradient error]
_STATS: dict = {}


def rel_error(ours, theirs) -> float:
    """max|a - b| / max(max|b|, tiny). NaNs and infinities must sit at the same places
    (with the same sign) in both; they are then left out of the measure."""
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(theirs, dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: cnnlab {a.shape} vs torch {b.shape}")
    if a.size == 0:
        return 0.0
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("inf")
    inf_a, inf_b = np.isinf(a), np.isinf(b)
    if not np.array_equal(inf_a, inf_b) or not np.array_equal(a[inf_a], b[inf_b]):
        return float("inf")
    finite = np.isfinite(b)
    if not finite.any():
        return 0.0
    a, b = a[finite], b[finite]
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), TINY))


def record(name: str, dtype, fwd_err: float = 0.0, grad_err: float = 0.0, cases: int = 1) -> None:
    """Add one parity case to the session table (``check_op`` calls this itself)."""
    key = (name, np.dtype(dtype).name)
    row = _STATS.setdefault(key, [0, 0.0, 0.0])
    row[0] += cases
    row[1] = max(row[1], fwd_err)
    row[2] = max(row[2], grad_err)


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _torch_array(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def check_op(name, cnnlab_fn, torch_fn, arrays, dtype=np.float64, *, requires_grad=None,
             seed=0, tol=None, backward=True):
    """Compare ``cnnlab_fn`` with ``torch_fn`` on the same inputs, values and gradients.

    Args:
        name: the op's name, the row of the session table.
        cnnlab_fn: called once with one ``cnnlab.Tensor`` per array; returns a Tensor or a
            tuple of them (integer outputs, such as pooling indices, must match exactly).
        torch_fn: called once with one ``torch.Tensor`` per array, returns the same.
        arrays: NumPy arrays. Floating arrays are cast to ``dtype``; others (class
            indices) are passed unchanged.
        requires_grad: one bool per array; default: every floating array.
        seed: seed of the random upstream gradient.
        tol: the allowed relative error; default 1e-10 (float64) or 1e-4 (float32).
        backward: also compare the gradients.

    Returns:
        (cnnlab outputs, torch outputs), both as tuples, for further checks.
    """
    dtype = np.dtype(dtype)
    tol = TOLERANCE[dtype] if tol is None else tol
    arrays = [np.asarray(a) for a in arrays]
    arrays = [a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays]
    if requires_grad is None:
        requires_grad = [a.dtype.kind == "f" for a in arrays]
    assert len(requires_grad) == len(arrays), "check_op: one requires_grad flag per array"
    ours = [cnnlab.Tensor(a.copy(), requires_grad=bool(rg)) for a, rg in zip(arrays, requires_grad)]
    theirs = [torch.tensor(a.copy(), requires_grad=bool(rg)) for a, rg in zip(arrays, requires_grad)]

    out_c, out_t = _as_tuple(cnnlab_fn(*ours)), _as_tuple(torch_fn(*theirs))
    assert len(out_c) == len(out_t), f"{name}: cnnlab gave {len(out_c)} outputs, torch {len(out_t)}"

    fwd_err, grad_err = 0.0, 0.0
    diff_pairs = []  # (cnnlab output, torch output) pairs to backpropagate through
    for k, (oc, ot) in enumerate(zip(out_c, out_t)):
        a, b = np.asarray(oc.data if isinstance(oc, cnnlab.Tensor) else oc), _torch_array(ot)
        assert a.shape == b.shape, f"{name}: output {k} has shape {a.shape}, torch {b.shape}"
        if b.dtype.kind != "f":
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: integer output {k} differs from torch")
            continue
        assert a.dtype == dtype, f"{name}: output {k} has dtype {a.dtype}, expected {dtype} (as torch)"
        fwd_err = max(fwd_err, rel_error(a, b))
        if ot.requires_grad:
            assert isinstance(oc, cnnlab.Tensor) and oc.requires_grad, \
                f"{name}: output {k} does not require grad in cnnlab but does in torch (tape lost)"
            diff_pairs.append((oc, ot))
    record(name, dtype, fwd_err, 0.0)
    assert fwd_err <= tol, f"{name} [{dtype}]: forward relative error {fwd_err:.3g} > {tol:g}"
    if not (backward and diff_pairs):
        return out_c, out_t

    rng = np.random.default_rng(seed)
    upstream = [rng.standard_normal(ot.shape).astype(dtype) for _, ot in diff_pairs]
    torch.autograd.backward([ot for _, ot in diff_pairs],
                            [torch.from_numpy(g.copy()) for g in upstream])
    for (oc, _), g in zip(diff_pairs, upstream):
        oc.backward(g.copy(), retain_graph=True)

    worst = None
    for i, (tc, tt, rg) in enumerate(zip(ours, theirs, requires_grad)):
        if not rg:
            continue
        gc = np.zeros(arrays[i].shape, dtype) if tc.grad is None else np.asarray(tc.grad)
        gt = np.zeros(arrays[i].shape, dtype) if tt.grad is None else _torch_array(tt.grad)
        assert gc.shape == arrays[i].shape, \
            f"{name}: gradient of input {i} has shape {gc.shape}, input {arrays[i].shape}"
        assert gc.dtype == dtype, f"{name}: gradient of input {i} has dtype {gc.dtype}, expected {dtype}"
        err = rel_error(gc, gt)
        if err > grad_err:
            grad_err, worst = err, i
    record(name, dtype, grad_err=grad_err, cases=0)
    assert grad_err <= tol, f"{name} [{dtype}]: gradient of input {worst} relative error {grad_err:.3g} > {tol:g}"
    return out_c, out_t


# ----- torch references for what cnnlab does and torch has no argument for -----
def tf_same_pads(hw, kernel, stride, dilation):
    """TensorFlow's 'same' padding (top, bottom, left, right): output ceil(H / s), total
    max((ceil(H/s) - 1) s + d (k - 1) + 1 - H, 0), the odd pixel at the bottom/right."""
    pads = []
    for n, k, s, d in zip(hw, kernel, stride, dilation):
        total = max((math.ceil(n / s) - 1) * s + d * (k - 1) + 1 - n, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


def torch_pad(x, pads, mode):
    """Pad the last two axes of a torch tensor by (top, bottom, left, right) in a cnnlab
    padding mode. 'symmetric', which torch lacks, is a differentiable gather with the
    indices np.pad(mode='symmetric') produces."""
    t, b, l, r = pads
    if mode in ("zeros", "constant"):
        return torch.nn.functional.pad(x, (l, r, t, b))
    if mode == "symmetric":
        ih = torch.from_numpy(np.pad(np.arange(x.shape[-2]), (t, b), mode="symmetric"))
        iw = torch.from_numpy(np.pad(np.arange(x.shape[-1]), (l, r), mode="symmetric"))
        return x.index_select(-2, ih).index_select(-1, iw)
    return torch.nn.functional.pad(x, (l, r, t, b), mode=mode)


def distinct(rng, *shape):
    """Random values with no ties (a shuffled grid plus jitter), so max-based ops have one
    arg-max even after a cast to float32."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) + rng.uniform(0.1, 0.9, n)) / n * 4 - 2).reshape(shape)


@pytest.fixture(scope="session", name="check_op")
def check_op_fixture():
    return check_op


@pytest.fixture(params=[np.float64, np.float32], ids=["f64", "f32"])
def dtype(request):
    """Run a test once in float64 and once in float32."""
    return np.dtype(request.param)


# ----- the session table, across pytest-xdist workers -----
def _merge(stats: dict) -> None:
    for key, (cases, fwd, grad) in stats.items():
        record(key[0], key[1], fwd, grad, cases)


def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand the table to the controller
        workeroutput["cnnlab_parity"] = json.dumps([[k[0], k[1], *v] for k, v in _STATS.items()])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    data = getattr(node, "workeroutput", {}).get("cnnlab_parity")
    if data:
        _merge({(op, dt): (cases, fwd, grad) for op, dt, cases, fwd, grad in json.loads(data)})


def pytest_terminal_summary(terminalreporter):
    if not _STATS:
        return
    tr = terminalreporter
    tr.section("cnnlab vs PyTorch: largest relative error per op and dtype")
    tr.write_line(f"{'op':<34} {'dtype':<8} {'cases':>6} {'forward':>10} {'gradient':>10} {'allowed':>8}")
    total = 0
    for (op, dt), (cases, fwd, grad) in sorted(_STATS.items()):
        total += cases
        allowed = TOLERANCE[np.dtype(dt)]
        flag = "" if max(fwd, grad) <= allowed else "  <-- over"
        tr.write_line(f"{op:<34} {dt:<8} {cases:>6} {fwd:>10.2e} {grad:>10.2e} {allowed:>8.0e}{flag}")
    tr.write_line(f"{total} parity cases in all")
