"""The ``cnnlab`` command."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _cmd_train(args) -> int:
    import cnnlab
    from cnnlab import functional as F, models

    cnnlab.manual_seed(args.seed)
    model = models.lenet5()
    cnnlab.summary(model, (1, 28, 28))
    # Until dataset loaders exist, this fits one fixed random batch: it runs every part of
    # the pipeline (forward, loss, backward, update) and shows the loss going down.
    rng = np.random.default_rng(args.seed)
    x = cnnlab.Tensor(rng.standard_normal((args.batch_size, 1, 28, 28)).astype(np.float32))
    y = cnnlab.Tensor(rng.integers(0, 10, args.batch_size))
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        loss = F.cross_entropy(model(x), y)
        model.zero_grad()
        loss.backward()
        for p in model.parameters():
            p.data -= np.float32(args.lr) * p.grad
        if step == 1 or step % 20 == 0 or step == args.steps:
            acc = float((model(x).data.argmax(1) == y.data).mean())
            print(f"step {step:3d}  loss {loss.item():.4f}  batch accuracy {acc:.2f}")
    print(f"{args.steps} steps in {time.perf_counter() - start:.2f} s")
    return 0


def _cmd_summary(args) -> int:
    import cnnlab
    from cnnlab import models

    builders = {"lenet5": models.lenet5}
    model = builders[args.model]()
    cnnlab.summary(model, tuple(args.input_shape))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cnnlab", description="Convolutional neural networks on NumPy.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model (for now: LeNet-5 on one fixed random batch)")
    p.add_argument("--steps", type=int, default=200, help="optimisation steps (default 200)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(run=_cmd_train)
    p = sub.add_parser("summary", help="print a model's layers, shapes, parameters and receptive fields")
    p.add_argument("model", choices=["lenet5"], help="architecture")
    p.add_argument("--input-shape", type=int, nargs=3, default=[1, 28, 28], metavar=("C", "H", "W"),
                   help="input shape (default 1 28 28)")
    p.set_defaults(run=_cmd_summary)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
