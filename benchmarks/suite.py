"""The benchmark sections and the markdown report. Run through ``run.py``, which fixes the
thread count before NumPy is imported; each section prints its table as it goes."""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as TF

import cnnlab
from cnnlab import data, models, optim
from cnnlab import functional as F
from cnnlab import nn as cnn

import timing
import twins
from timing import LoadMonitor, Series, compare, noisy_summary, timed

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Settings:
    blocks: int            # rounds of A/B blocks per row
    warmup: int            # untimed calls per contender before the blocks
    target_s: float        # about how long one block lasts
    epoch_fraction: float  # of the MNIST epoch actually run (the rest is extrapolated)
    epoch_chunks: int      # interleaved chunks the epoch is cut into
    memory_runs: int       # fresh processes per contender for peak memory
    cold_runs: int         # fresh processes per command for the cold start


QUICK = Settings(blocks=3, warmup=2, target_s=0.1, epoch_fraction=0.1, epoch_chunks=4, memory_runs=1, cold_runs=3)
FULL = Settings(blocks=7, warmup=2, target_s=0.4, epoch_fraction=1.0, epoch_chunks=10, memory_runs=3, cold_runs=5)

# (label, zoo name, input shape) of the models the rows use
LENET5 = ("LeNet-5", "lenet5", (1, 28, 28))
MNIST_CNN = ("MNIST CNN", "mnist_cnn", (1, 28, 28))
RESNET20 = ("ResNet-20", "resnet20", (3, 32, 32))
TRAIN_ROWS = [(LENET5, 64), (LENET5, 256), (MNIST_CNN, 128), (RESNET20, 128)]
INFERENCE_ROWS = [(LENET5, 1), (LENET5, 256), (RESNET20, 1), (RESNET20, 256)]
CONV_MODELS = [(LENET5, 64), (MNIST_CNN, 128), (RESNET20, 128)]  # conv layers at their training batch
# the layer also timed with torch's channels_last layout: MNIST CNN's conv32->64 (3x3 on 26x26, batch 128)
CHANNELS_LAST = dict(n=128, c=32, f=64, kernel=(3, 3), stride=(1, 1))
POOL_CASES = [  # (operation, input shape, keyword arguments, where the shape comes from)
    ("max_pool2d 2x2", (64, 6, 28, 28), dict(kernel_size=2), "LeNet-5 after conv1"),
    ("max_pool2d 2x2", (128, 64, 24, 24), dict(kernel_size=2), "MNIST CNN after conv2"),
    ("max_pool2d 3x3/2, pad 1", (16, 64, 112, 112), dict(kernel_size=3, stride=2, padding=1), "ResNet-50 stem"),
    ("avg_pool2d 2x2", (128, 64, 16, 16), dict(kernel_size=2), "VGG-style stage"),
    ("avg_pool2d 3x3/2, pad 1", (128, 32, 32, 32), dict(kernel_size=3, stride=2, padding=1), "CIFAR-size"),
]
SGEMM_N = 2048
MNIST_BATCH = 64
# what `cnnlab train` stores (see cmd_train in cnnlab/cli.py); predict reads model, in_shape,
# num_classes, model_kwargs, classes and normalize
PREDICT_META = {
    "model": "lenet5", "model_kwargs": {}, "in_shape": [1, 28, 28], "num_classes": 10, "dataset": "mnist",
    "classes": [str(d) for d in range(10)], "normalize": {"mean": [0.1307], "std": [0.3081]},
    "args": {"model": "lenet5", "dataset": "mnist", "epochs": 0, "batch_size": MNIST_BATCH, "seed": 0},
}


# ----- the report -----
class Report:
    """Markdown lines, printed as they are added and kept for ``--out``."""

    def __init__(self):
        self.lines = []
        self.t0 = time.perf_counter()

    def add(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def header(self, *columns: str) -> None:
        self.add("| " + " | ".join(columns) + " |")
        self.add("|" + "|".join(":---" if i == 0 else "---:" for i in range(len(columns))) + "|")

    def row(self, *cells) -> None:
        self.add("| " + " | ".join(str(c) for c in cells) + " |")

    def progress(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f} s] {message}", file=sys.stderr, flush=True)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def cell(s: Series) -> str:
    """median (min–max) over blocks, in ms."""
    return f"{fmt_ms(s.median)} ({fmt_ms(s.low)}–{fmt_ms(s.high)})"


def ratio(ours: Series, theirs: Series) -> str:
    return f"{ours.median / theirs.median:.2f}×"


def comparison_row(report: Report, label: str, ours: Series, theirs: Series) -> None:
    report.row(label, cell(ours), cell(theirs), ratio(ours, theirs), noisy_summary(ours, theirs))


# ----- models and data shared by the sections -----
def model_pair(spec):
    """A fresh cnnlab zoo model and its torch twin holding the same weights."""
    _, name, in_shape = spec
    ours = models.create(name, in_shape, 10)
    theirs = twins.TWINS[name](in_shape[0], 10)
    twins.copy_weights(ours, theirs)
    return ours, theirs


def random_batch(spec, batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch,) + spec[2], dtype=np.float32)
    return x, rng.integers(0, 10, batch)


def train_step(model, optim_module, cross_entropy):
    """train_step(x, y) for one library (the two APIs match call for call): forward,
    cross-entropy, zero_grad, backward, SGD-momentum update; returns (logits, loss)."""
    opt = optim_module.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(x, y):
        logits = model(x)
        loss = cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return logits, loss
    return step


def train_step_pair(ours, theirs):
    """(cnnlab's train_step, PyTorch's train_step), see :func:`train_step`."""
    return train_step(ours, optim, F.cross_entropy), train_step(theirs, torch.optim, TF.cross_entropy)


# ----- the sections -----
def section_header(report: Report, settings: Settings, args) -> None:
    mode = "quick (fewer blocks, a fraction of the epoch)" if args.quick else "full"
    report.add("# cnnlab vs PyTorch")
    report.add()
    reuse = ("yes (cnnlab.reuse_freed_memory, which cnnlab.train.fit calls; it is process-wide, so both "
             "libraries' rows have it)" if args.reuse_memory else "no (not glibc)")
    for label, value in timing.machine_facts(args.threads) + [("freed memory kept for reuse", reuse),
                                                              ("mode", mode)]:
        report.add(f"- **{label}**: {value}")
    report.add()
    report.add(f"Times are medians over {settings.blocks} interleaved blocks per contender, with the "
               "(min–max) over blocks in brackets; the ratio is cnnlab / PyTorch (above 1: cnnlab is slower). "
               f"A block is *noisy* when it lies more than {timing.NOISE_DEVIATION:.0%} from its contender's "
               f"median (dev) or other processes kept more than {timing.OTHER_LOAD_CORES} cores busy "
               "during it (load). float32 everywhere; both libraries run identical architectures with "
               "identical weights on the same batches.")
    report.add()
    diffs = []
    for spec in (LENET5, MNIST_CNN, RESNET20):
        ours, theirs = model_pair(spec)
        diffs.append(f"{spec[0]} {twins.check_twin(ours, theirs, spec[2]):.1e}")
    report.add("Twins checked before timing (largest |logit difference| in eval mode): " + ", ".join(diffs) + ".")
    report.add()


def section_sgemm(report, settings, monitor) -> float:
    """Returns NumPy's SGEMM rate (FLOP/s), the yardstick of the convolution table."""
    report.progress("SGEMM")
    n = SGEMM_N
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.empty(n, n)
    res = compare({"numpy": timed(lambda: np.matmul(a, b, out=c)), "torch": timed(lambda: torch.mm(ta, tb, out=tc))},
                  monitor, blocks=settings.blocks, warmup=settings.warmup, target_s=settings.target_s)
    flops = 2 * n ** 3

    def gflops(seconds):
        return f"{flops / seconds / 1e9:.0f}"

    report.add(f"## SGEMM: the machine's matrix-multiply rate ({n}x{n} @ {n}x{n}, float32)")
    report.add()
    report.header("", "GFLOP/s (min–max)", "ms", "noisy blocks")
    for name, label in (("numpy", "NumPy `a @ b`"), ("torch", "torch.mm")):
        s = res[name]
        rate = f"{gflops(s.median)} ({gflops(s.high)}–{gflops(s.low)})"  # the slowest block has the lowest rate
        report.row(label, rate, fmt_ms(s.median), noisy_summary(s))
    report.add()
    report.add("The NumPy rate is the 100% of the convolution table's '% of SGEMM' columns.")
    report.add()
    return flops / res["numpy"].median


def section_training(report, settings, monitor) -> None:
    report.add("## Training step (forward, cross-entropy, backward, SGD with momentum)")
    report.add()
    report.header("model, batch", "cnnlab ms", "PyTorch ms", "cnnlab / PyTorch", "noisy blocks")
    for spec, batch in TRAIN_ROWS:
        report.progress(f"training step {spec[0]} batch {batch}")
        ours, theirs = model_pair(spec)
        step_a, step_b = train_step_pair(ours, theirs)
        x, y = random_batch(spec, batch)
        xa, ya, xb, yb = cnnlab.Tensor(x), cnnlab.Tensor(y), torch.from_numpy(x), torch.from_numpy(y)
        res = compare({"cnnlab": timed(lambda: step_a(xa, ya)), "torch": timed(lambda: step_b(xb, yb))},
                      monitor, blocks=settings.blocks, warmup=settings.warmup, target_s=settings.target_s)
        comparison_row(report, f"{spec[0]}, batch {batch}", res["cnnlab"], res["torch"])
    report.add()


def section_inference(report, settings, monitor) -> None:
    report.add("## Inference (eval mode, no gradient tape)")
    report.add()
    report.header("model, batch", "cnnlab ms", "PyTorch ms", "cnnlab / PyTorch", "noisy blocks")
    for spec, batch in INFERENCE_ROWS:
        report.progress(f"inference {spec[0]} batch {batch}")
        ours, theirs = model_pair(spec)
        ours.eval()
        theirs.eval()
        x, _ = random_batch(spec, batch)
        xa, xb = cnnlab.Tensor(x), torch.from_numpy(x)

        def infer_cnnlab():
            with cnnlab.no_grad():
                ours(xa)

        def infer_torch():
            with torch.no_grad():
                theirs(xb)

        res = compare({"cnnlab": timed(infer_cnnlab), "torch": timed(infer_torch)},
                      monitor, blocks=settings.blocks, warmup=settings.warmup, target_s=settings.target_s)
        comparison_row(report, f"{spec[0]}, batch {batch}", res["cnnlab"], res["torch"])
    report.add()


@dataclass(frozen=True)
class ConvShape:
    n: int
    c: int
    h: int
    w: int
    f: int
    kernel: tuple
    stride: tuple
    padding: tuple
    bias: bool

    @property
    def out_hw(self):
        return tuple((size + 2 * p - k) // s + 1
                     for size, p, k, s in zip((self.h, self.w), self.padding, self.kernel, self.stride))

    @property
    def forward_flops(self) -> int:
        ho, wo = self.out_hw
        return 2 * self.n * ho * wo * self.f * self.c * self.kernel[0] * self.kernel[1]

    def describe(self) -> str:
        (kh, kw), (sh, _), (ph, _) = self.kernel, self.stride, self.padding
        return (f"{self.n}x{self.c}x{self.h}x{self.w} → {self.f}, {kh}x{kw}/{sh}, pad {ph}"
                + ("" if self.bias else ", no bias"))


def conv_shapes() -> dict:
    """{ConvShape: [layer names]} of every convolution in the models of CONV_MODELS, traced
    by running each model once, so the shapes are the models' own."""
    found = {}
    for (label, name, in_shape), batch in CONV_MODELS:
        model = models.create(name, in_shape, 10)
        convs = [(n, m) for n, m in model.named_modules() if isinstance(m, cnn.Conv2d)]
        # a Sequential's layers are named by index: call them conv1, conv2, ... instead
        names = {id(m): n if not n.isdigit() else f"conv{k}" for k, (n, m) in enumerate(convs, start=1)}

        def observe(module, inputs, output, label=label, batch=batch, names=names):
            if isinstance(module, cnn.Conv2d):
                assert module.dilation == (1, 1) and module.groups == 1 and not isinstance(module.padding, str)
                shape = ConvShape(batch, *inputs[0].shape[1:], module.out_channels, module.kernel_size,
                                  module.stride, module.padding, module.bias is not None)
                found.setdefault(shape, []).append(f"{label} {names[id(module)]}")

        with cnnlab.no_grad(), cnn.observe_calls(observe):
            model(cnnlab.Tensor(np.zeros((1,) + in_shape, np.float32)))
    return found


def conv_contenders(shape: ConvShape, channels_last: bool):
    """{'forward' | 'backward': {contender: step}}. Forward steps run under no_grad;
    backward steps run a forward untimed and time only the backward pass (input, weight
    and bias gradients) with a random upstream gradient."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((shape.n, shape.c, shape.h, shape.w), dtype=np.float32)
    w = (rng.standard_normal((shape.f, shape.c) + shape.kernel, dtype=np.float32)
         / math.sqrt(shape.c * shape.kernel[0] * shape.kernel[1]))
    b = rng.standard_normal(shape.f, dtype=np.float32) if shape.bias else None
    g = rng.standard_normal((shape.n, shape.f) + shape.out_hw, dtype=np.float32)
    args = dict(stride=shape.stride, padding=shape.padding)

    def ours_forward():
        with cnnlab.no_grad():
            F.conv2d(cnnlab.Tensor(x), cnnlab.Tensor(w), None if b is None else cnnlab.Tensor(b), **args)

    def ours_backward():
        leaves = [cnnlab.Tensor(a, requires_grad=True) for a in (x, w) + ((b,) if b is not None else ())]
        out = F.conv2d(*leaves, **args)
        t0 = time.perf_counter()
        out.backward(g)
        return time.perf_counter() - t0

    def torch_pair(memory_format):
        xt, wt = (torch.from_numpy(a).contiguous(memory_format=memory_format) for a in (x, w))
        bt = None if b is None else torch.from_numpy(b)
        gt = torch.from_numpy(g).contiguous(memory_format=memory_format)

        def forward():
            with torch.no_grad():
                TF.conv2d(xt, wt, bt, **args)

        def backward():
            leaves = [t.detach().requires_grad_() for t in (xt, wt) + ((bt,) if bt is not None else ())]
            out = TF.conv2d(*leaves, **args)
            t0 = time.perf_counter()
            out.backward(gt)
            return time.perf_counter() - t0

        return forward, backward

    torch_forward, torch_backward = torch_pair(torch.contiguous_format)
    steps = {"forward": {"cnnlab": timed(ours_forward), "torch": timed(torch_forward)},
             "backward": {"cnnlab": ours_backward, "torch": torch_backward}}
    if channels_last:
        cl_forward, cl_backward = torch_pair(torch.channels_last)
        steps["forward"]["torch channels_last"] = timed(cl_forward)
        steps["backward"]["torch channels_last"] = cl_backward
    return steps


def section_conv(report, settings, monitor, sgemm_rate) -> None:
    report.add("## Convolution layers: cnnlab.functional.conv2d vs torch.nn.functional.conv2d")
    report.add()
    report.add("Every distinct convolution of LeNet-5 (batch 64), the MNIST CNN and ResNet-20 (batch 128), "
               "NCHW. Forward alone under no_grad; backward alone = input, weight (and bias) gradients from a "
               "random upstream gradient, the forward run untimed. '% of SGEMM' = "
               "(2·N·Ho·Wo·F·C·KH·KW FLOPs forward, twice that backward) / time / NumPy's SGEMM rate above.")
    report.add()
    report.header("layer", "input → filters, kernel/stride, pad", "pass", "cnnlab ms", "PyTorch ms",
                  "cnnlab / PyTorch", "cnnlab % of SGEMM", "PyTorch % of SGEMM", "noisy blocks")
    labels = [label for (label, _, _), _ in CONV_MODELS]
    totals = {label: [0.0, 0.0, 0.0] for label in labels}     # per model: FLOPs, cnnlab s, PyTorch s
    for shape, layers in conv_shapes().items():
        where = layers[0] + (f" (+{len(layers) - 1} alike)" if len(layers) > 1 else "")
        channels_last = all(getattr(shape, k) == v for k, v in CHANNELS_LAST.items())
        report.progress(f"conv {shape.describe()}")
        for pass_, steps in conv_contenders(shape, channels_last).items():
            flops = shape.forward_flops * (2 if pass_ == "backward" else 1)
            res = compare(steps, monitor, blocks=settings.blocks, warmup=settings.warmup, target_s=settings.target_s)

            def pct(s):
                return f"{100 * flops / s.median / sgemm_rate:.0f}%"

            ours = res["cnnlab"]
            for layer in layers:   # each occurrence counts, at the median of its shape
                total = totals[next(label for label in labels if layer.startswith(label + " "))]
                total[0] += flops
                total[1] += ours.median
                total[2] += res["torch"].median
            for name in ("torch", "torch channels_last"):
                if name in res:
                    theirs = res[name]
                    tag = pass_ if name == "torch" else f"{pass_}, torch channels_last"
                    report.row(where, shape.describe(), tag, cell(ours), cell(theirs), ratio(ours, theirs),
                               pct(ours), pct(theirs), noisy_summary(ours, theirs))
    report.add()
    report.add("Each model's convolutions together, forward + backward, every layer counted as often as it "
               "occurs (the medians above, summed; PyTorch NCHW):")
    report.add()
    report.header("model", "cnnlab ms", "PyTorch ms", "cnnlab / PyTorch", "cnnlab % of SGEMM", "PyTorch % of SGEMM")
    for label, (flops, ours_s, theirs_s) in totals.items():
        report.row(label, f"{1e3 * ours_s:.1f}", f"{1e3 * theirs_s:.1f}", f"{ours_s / theirs_s:.2f}×",
                   f"{100 * flops / ours_s / sgemm_rate:.0f}%", f"{100 * flops / theirs_s / sgemm_rate:.0f}%")
    report.add()


def section_pooling(report, settings, monitor) -> None:
    report.add("## Pooling: forward + backward")
    report.add()
    report.header("operation", "input (from)", "cnnlab ms", "PyTorch ms", "cnnlab / PyTorch", "noisy blocks")
    for op, shape, kwargs, origin in POOL_CASES:
        report.progress(f"{op} on {shape}")
        ours_fn, torch_fn = (F.max_pool2d, TF.max_pool2d) if op.startswith("max") else (F.avg_pool2d, TF.avg_pool2d)
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape, dtype=np.float32)
        with torch.no_grad():
            out_shape = tuple(torch_fn(torch.from_numpy(x), **kwargs).shape)
        g = rng.standard_normal(out_shape, dtype=np.float32)
        xt, gt = torch.from_numpy(x), torch.from_numpy(g)

        def ours():
            ours_fn(cnnlab.Tensor(x, requires_grad=True), **kwargs).backward(g)

        def theirs():
            torch_fn(xt.detach().requires_grad_(), **kwargs).backward(gt)

        res = compare({"cnnlab": timed(ours), "torch": timed(theirs)},
                      monitor, blocks=settings.blocks, warmup=settings.warmup, target_s=settings.target_s)
        report.row(op, f"{'x'.join(map(str, shape))} ({origin})", cell(res["cnnlab"]), cell(res["torch"]),
                   ratio(res["cnnlab"], res["torch"]), noisy_summary(res["cnnlab"], res["torch"]))
    report.add()


def section_epoch(report, settings, monitor, data_dir) -> None:
    report.add(f"## One epoch: LeNet-5 on the MNIST training set (batch {MNIST_BATCH})")
    report.add()
    report.progress("MNIST epoch")
    try:
        train = data.mnist("train", data_dir=data_dir, download=False)
    except (OSError, ValueError) as e:
        report.add(f"Skipped: the MNIST files were not found ({e}). Give `--data-dir DIR` or set `$CNNLAB_DATA`.")
        report.add()
        return
    transform = data.Compose([data.RandomTranslate(2), data.Normalize(*train.mean_std())])
    loader = data.DataLoader(train, MNIST_BATCH, shuffle=True, seed=0, transform=transform)
    total = len(loader)
    run = min(total, max(settings.epoch_chunks, math.ceil(total * settings.epoch_fraction)))
    chunks = [len(part) for part in np.array_split(np.arange(run), settings.epoch_chunks)]

    ours, theirs = model_pair(LENET5)
    step_a, step_b = train_step_pair(ours, theirs)

    def loop_cnnlab(batches):  # as cnnlab.train.fit does it: loss value and accuracy every batch
        correct = 0
        for x, y in batches:
            logits, loss = step_a(x, y)
            loss.item()
            correct += int((logits.data.argmax(axis=1) == y.data).sum())

    def loop_torch(batches):  # the same numpy batches, handed over without a copy
        correct = 0
        for x, y in batches:
            xt, yt = torch.from_numpy(x.data), torch.from_numpy(y.data)
            logits, loss = step_b(xt, yt)
            loss.item()
            correct += int((logits.argmax(dim=1) == yt).sum())

    def chunked(loop):
        """A step that runs the next chunk of epoch 0 and returns its seconds per batch
        (zip takes from range first, so it stops without drawing a batch too many)."""
        batches, sizes = loader.iter_epoch(0), iter(chunks)

        def step():
            n = next(sizes)
            t0 = time.perf_counter()
            loop(b for _, b in zip(range(n), batches))
            return (time.perf_counter() - t0) / n
        return step

    for loop in (loop_cnnlab, loop_torch):  # warm-up on a few batches of another epoch
        loop(b for _, b in zip(range(5), loader.iter_epoch(1)))
    res = compare({"cnnlab": chunked(loop_cnnlab), "torch": chunked(loop_torch)}, monitor,
                  blocks=len(chunks), warmup=0, reps=1)
    t0 = time.perf_counter()
    for _ in zip(range(run), loader.iter_epoch(0)):
        pass
    loader_s = (time.perf_counter() - t0) * total / run

    scale = total / run

    def epoch_seconds(s: Series) -> float:  # the chunks' times summed, scaled up to the whole epoch
        return sum(t * n for t, n in zip(s.times, chunks)) * scale

    def epoch_cell(s: Series) -> str:
        return f"{epoch_seconds(s):.1f} ({s.low * total:.1f}–{s.high * total:.1f})"

    if run == total:
        report.add(f"The whole epoch ({total} batches of {MNIST_BATCH}), run in {len(chunks)} interleaved chunks; "
                   "the spread is the slowest and fastest chunk's time per batch times the number of batches.")
    else:
        report.add(f"**Extrapolated**: {run} of the epoch's {total} batches (1/{scale:.0f} of the epoch) were run, "
                   f"in {len(chunks)} interleaved chunks, and the time scaled by {scale:.2f}; the spread is the "
                   "slowest and fastest chunk's time per batch times the number of batches.")
    report.add("Both loops take the same batches from cnnlab's DataLoader (shuffle, random translation by up to "
               "2 pixels, normalisation) and compute the loss value and accuracy every batch, as `fit` does.")
    report.add()
    report.header("", "cnnlab s", "PyTorch s", "cnnlab / PyTorch", "noisy chunks")
    ours_s, theirs_s = epoch_seconds(res["cnnlab"]), epoch_seconds(res["torch"])
    label = "full epoch" + ("" if run == total else " (extrapolated)")
    report.row(f"LeNet-5, MNIST {label}", epoch_cell(res["cnnlab"]), epoch_cell(res["torch"]),
               f"{ours_s / theirs_s:.2f}×", noisy_summary(res["cnnlab"], res["torch"]))
    report.add()
    report.add(f"Of which the DataLoader alone (no model): {loader_s:.1f} s per epoch "
               f"({loader_s / ours_s:.0%} of cnnlab's epoch, {loader_s / theirs_s:.0%} of PyTorch's).")
    report.add()


def section_memory(report, settings, threads) -> None:
    report.add("## Peak memory: one ResNet-20 training step, batch 128")
    report.add()
    report.add("RSS high-water mark (`getrusage` ru_maxrss) in a fresh process per measurement, minus the mark "
               f"once the imports are done; median of {settings.memory_runs} process(es) each.")
    report.add()
    results = {"cnnlab": [], "torch": []}
    for i in range(settings.memory_runs):
        for framework in results:
            report.progress(f"peak memory {framework} ({i + 1}/{settings.memory_runs})")
            proc = timing.run_process([sys.executable, os.path.join(HERE, "memory_probe.py"), framework,
                                       "--batch", "128", "--threads", str(threads)], cwd=HERE)
            if proc.returncode:
                raise RuntimeError(f"memory_probe.py {framework} failed:\n{proc.stderr}")
            results[framework].append(json.loads(proc.stdout.strip().splitlines()[-1]))

    def median(framework, key):
        return float(np.median([r[key] for r in results[framework]]))

    report.header("", "cnnlab MiB", "PyTorch MiB", "cnnlab / PyTorch")
    for key, label in (("step_mib", "training step (peak − baseline)"), ("baseline_mib", "baseline after imports"),
                       ("peak_mib", "peak")):
        a, b = median("cnnlab", key), median("torch", key)
        report.row(label, f"{a:.0f}", f"{b:.0f}", f"{a / b:.2f}×" if b > 0 else "–")
    report.add()


def section_cold_start(report, settings, monitor) -> None:
    report.add("## Cold start: a fresh process")
    report.add()
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-") as tmp:
        checkpoint, image = os.path.join(tmp, "lenet5.npz"), os.path.join(tmp, "digit.png")
        from cnnlab.train import save_checkpoint
        from PIL import Image
        save_checkpoint(checkpoint, models.lenet5(), meta=PREDICT_META)
        digit = np.zeros((28, 28), np.uint8)
        digit[6:22, 12:16] = 255  # a one
        Image.fromarray(digit).save(image)
        commands = {
            "`python -m cnnlab.cli predict CHECKPOINT IMAGE` (LeNet-5, one PNG)":
                [sys.executable, "-m", "cnnlab.cli", "predict", checkpoint, image],
            "`python -c 'import torch'`": [sys.executable, "-c", "import torch"],
            "`python -c 'import cnnlab'` (for reference)": [sys.executable, "-c", "import cnnlab"],
            "`python -c 'import numpy'` (for reference)": [sys.executable, "-c", "import numpy"],
        }
        runs = {label: [] for label in commands}
        loads = []
        report.progress("cold start")
        for i in range(settings.cold_runs + 1):  # the first round only warms the file cache
            for label, argv in commands.items():
                monitor.start()
                proc = timing.run_process(argv, cwd=tmp)
                load = monitor.stop()
                if proc.returncode:
                    raise RuntimeError(f"{' '.join(argv)} failed with status {proc.returncode}:\n{proc.stderr}")
                if i:
                    runs[label].append(proc)
                    loads.append(load)
    report.add(f"Wall time from start to exit, median (min–max) of {settings.cold_runs} runs each, the commands "
               "taking turns after one untimed round; peak RSS = the process's own ru_maxrss (see spawn.py).")
    report.add()
    report.header("process", "wall ms", "peak RSS MiB", "vs `import torch`")
    torch_wall = np.median([p.wall_s for p in runs["`python -c 'import torch'`"]])
    for label, procs in runs.items():
        walls = [p.wall_s for p in procs]
        med = float(np.median(walls))
        report.row(label, f"{med * 1e3:.0f} ({min(walls) * 1e3:.0f}–{max(walls) * 1e3:.0f})",
                   f"{np.median([p.max_rss_mib for p in procs]):.0f}", f"{med / torch_wall:.2f}×")
    report.add()
    busy = sum(load > timing.OTHER_LOAD_CORES for load in loads)
    report.add(f"Runs during which other processes used more than {timing.OTHER_LOAD_CORES} cores: "
               f"{busy}/{len(loads)}.")
    report.add()


def run(args) -> int:
    torch.set_num_threads(args.threads)
    cnnlab.set_num_threads(args.threads)
    # as cnnlab.train.fit does; process-wide, so PyTorch's rows get the same allocator
    args.reuse_memory = cnnlab.reuse_freed_memory()
    settings = QUICK if args.quick else FULL
    monitor = LoadMonitor(args.threads)
    report = Report()
    section_header(report, settings, args)
    sgemm_rate = section_sgemm(report, settings, monitor)
    section_training(report, settings, monitor)
    section_inference(report, settings, monitor)
    section_conv(report, settings, monitor, sgemm_rate)
    section_pooling(report, settings, monitor)
    section_epoch(report, settings, monitor, args.data_dir)
    section_memory(report, settings, args.threads)
    section_cold_start(report, settings, monitor)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    report.add(f"Load average at the end: {load}. Total benchmark time "
               f"{time.perf_counter() - report.t0:.0f} s.")
    if args.out:
        with open(args.out, "w") as f:
            f.write(report.text())
        report.progress(f"written to {args.out}")
    return 0
