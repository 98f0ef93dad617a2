"""Peak memory of one ResNet-20 training step, measured in a fresh process.

    python benchmarks/memory_probe.py cnnlab|torch [--batch 128] [--threads 2]

Prints one JSON object: the RSS high-water mark (``getrusage(RUSAGE_SELF).ru_maxrss``)
once the imports are done (the baseline), after one training step (forward,
cross-entropy, backward, SGD-momentum update), and their difference. ``run.py`` starts a
new process for every measurement, so nothing allocated earlier hides in the mark.
"""
from __future__ import annotations

import argparse
import json
import resource


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def cnnlab_step(x, y):
    import cnnlab
    from cnnlab import functional as F, models, optim

    model = models.resnet20()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = F.cross_entropy(model(cnnlab.Tensor(x)), cnnlab.Tensor(y))
    opt.zero_grad()
    loss.backward()
    opt.step()


def torch_step(x, y):
    import torch
    import twins

    model = twins.ResNet20()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
    opt.zero_grad()
    loss.backward()
    opt.step()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("framework", choices=("cnnlab", "torch"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import numpy as np
    if args.framework == "cnnlab":
        import cnnlab  # imported here so that the baseline includes it
        # Numba and batch norm's compiled float32 kernels (if installed) load on first use:
        # use them once, on two values, so that the baseline holds them, as it holds torch
        x = cnnlab.Tensor(np.ones((2, 3), np.float32), requires_grad=True)
        cnnlab.functional.batch_norm(x, None, None, training=True).sum().backward()
        cnnlab.set_num_threads(args.threads)
        step = cnnlab_step
    else:
        import torch
        import twins  # noqa: F401
        torch.set_num_threads(args.threads)
        step = torch_step
    baseline = peak_rss_mib()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, args.batch)
    step(x, y)
    peak = peak_rss_mib()
    print(json.dumps({"framework": args.framework, "batch": args.batch, "baseline_mib": round(baseline, 1),
                      "peak_mib": round(peak, 1), "step_mib": round(peak - baseline, 1)}))


if __name__ == "__main__":
    main()
