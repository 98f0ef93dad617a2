"""Time to accuracy: LeNet-5 on MNIST to a test accuracy (default 99.0%), cnnlab and then
PyTorch with the same recipe, back to back, in one process.

    python benchmarks/time_to_accuracy.py --data-dir DIR [--threads 2] [--target 0.99] [--epochs 8]

Same recipe for both: the same initial weights (cnnlab's, copied into the PyTorch twin),
the same batches in the same order from cnnlab's DataLoader (shuffled, random shifts of
up to 2 pixels, normalised; batch 128), AdamW (lr 2e-3, weight decay 5e-4), a cosine
schedule over all steps of --epochs epochs, cross-entropy with label smoothing 0.1. After
every epoch the whole test set is evaluated; the clock (which includes the evaluations
and the data pipeline) stops at the first epoch whose test accuracy reaches the target.
The two runs do not take the same path to the bit, since float rounding differs, so
they may need different numbers of epochs; the table says how many each took.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from run import pin_threads

BATCH = 128


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks/time_to_accuracy.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", metavar="DIR", help="folder with the MNIST files (default: $CNNLAB_DATA, then "
                                                     "cnnlab's cache folder; nothing is downloaded)")
    p.add_argument("--threads", type=int, default=2, metavar="N", help="threads for both libraries (default 2)")
    p.add_argument("--target", type=float, default=0.99, help="test accuracy to reach (default 0.99)")
    p.add_argument("--epochs", type=int, default=8,
                   help="length of the cosine schedule; the most epochs run (default 8)")
    args = p.parse_args(argv)
    if args.threads < 1 or args.epochs < 1 or not 0 < args.target < 1:
        p.error("--threads and --epochs must be positive and --target between 0 and 1")
    return args


def run(args) -> int:
    import numpy as np
    import torch
    import torch.nn.functional as TF

    import cnnlab
    import twins
    from cnnlab import data, models, optim
    from cnnlab import functional as F

    torch.set_num_threads(args.threads)
    cnnlab.set_num_threads(args.threads)
    cnnlab.reuse_freed_memory()  # as cnnlab.train.fit does; process-wide, so both runs have it
    train = data.mnist("train", data_dir=args.data_dir, download=False)
    test = data.mnist("test", data_dir=args.data_dir, download=False)
    mean_std = train.mean_std()
    loader = data.DataLoader(train, BATCH, shuffle=True, seed=0,
                             transform=data.Compose([data.RandomTranslate(2), data.Normalize(*mean_std)]))
    test_x = data.Normalize(*mean_std)(test.images.astype(np.float32) / 255.0
                                       if test.images.dtype == np.uint8 else test.images)
    test_y = np.asarray(test.labels)
    total_steps = args.epochs * len(loader)

    cnnlab.manual_seed(0)
    ours = models.lenet5()
    theirs = twins.lenet5()
    twins.copy_weights(ours, theirs)

    def contender(model, optim_module, cross_entropy, no_grad, predict, convert):
        """(step, accuracy, convert) for one library: the two APIs match call for call."""
        opt = optim_module.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
        sched = optim_module.lr_scheduler.CosineAnnealingLR(opt, total_steps)

        def step(x, y):
            loss = cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            return loss.item()

        def accuracy():
            model.eval()
            with no_grad():
                pred = np.concatenate([predict(test_x[i:i + 1000]) for i in range(0, len(test_x), 1000)])
            model.train()
            return float((pred == test_y).mean())
        return step, accuracy, convert

    def cnnlab_run():
        return contender(ours, optim, F.cross_entropy, cnnlab.no_grad,
                         lambda x: ours(cnnlab.Tensor(x)).data.argmax(1), lambda x, y: (x, y.data))

    def torch_run():
        return contender(theirs, torch.optim, TF.cross_entropy, torch.no_grad,
                         lambda x: theirs(torch.from_numpy(x)).argmax(1).numpy(),
                         lambda x, y: (torch.from_numpy(x.data), torch.from_numpy(y.data)))

    results = {}
    for name, make in (("cnnlab", cnnlab_run), ("PyTorch", torch_run)):
        step, accuracy, convert = make()
        t0, curve, reached = time.perf_counter(), [], None
        for epoch in range(args.epochs):
            for x, y in loader.iter_epoch(epoch):
                step(*convert(x, y))
            curve.append(accuracy())
            print(f"{name} epoch {epoch + 1}: test accuracy {curve[-1]:.4f}, {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr, flush=True)
            if curve[-1] >= args.target:
                reached = time.perf_counter() - t0
                break
        results[name] = (reached, curve, time.perf_counter() - t0)

    print(f"## Time to {args.target:.1%} test accuracy: LeNet-5 on MNIST, same recipe, back to back\n")
    print(f"{args.threads} threads each; load average at the end {', '.join(f'{v:.2f}' for v in os.getloadavg())}.\n")
    print("| | epochs | wall time | test accuracy per epoch |")
    print("|---|---|---|---|")
    for name, (reached, curve, wall) in results.items():
        when = f"{reached:.1f} s" if reached is not None else f"not reached ({wall:.1f} s)"
        print(f"| {name} | {len(curve)} | {when} | {', '.join(f'{a:.2%}' for a in curve)} |")
    (a, *_), (b, *_) = results["cnnlab"], results["PyTorch"]
    if a is not None and b is not None:
        print(f"\ncnnlab / PyTorch: {a / b:.2f}x")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    pin_threads(args.threads)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
