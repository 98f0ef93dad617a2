"""Stochastic gradient descent, with momentum, Nesterov momentum and weight decay."""
from __future__ import annotations

from .optimizer import Optimizer, check_number


class SGD(Optimizer):
    r"""Stochastic gradient descent (``torch.optim.SGD``, the same update step for step).

    For each parameter p with gradient g, at step t (t = 1 on its first update)::

        g   <- -g                        if maximize
        g   <- g + weight_decay * p      if weight_decay != 0   (L2 penalty, through the gradient)
        if momentum != 0:
            b <- g                                           at t = 1 (no dampening on the first step)
            b <- momentum * b + (1 - dampening) * g          after
            g <- g + momentum * b        if nesterov, else   g <- b
        p   <- p - lr * g

    Args:
        params: an iterable of Tensors, or of parameter-group dicts (see :class:`Optimizer`).
        lr: learning rate. Default 1e-3.
        momentum: momentum factor. Default 0 (plain gradient descent, no state).
        dampening: how much of the new gradient goes into the momentum buffer is
            (1 - dampening). Default 0.
        weight_decay: L2 penalty. Default 0.
        nesterov: Nesterov momentum (needs momentum > 0 and dampening = 0). Default False.
        maximize: ascend the objective instead of descending it. Default False.

    State (per parameter, only with momentum): ``'momentum_buffer'``, an array like p.

    Example:
        >>> opt = SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        >>> opt.zero_grad(); loss.backward(); opt.step()
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults)

    def _check(self, options, where):
        check_number(options, "lr", where)
        check_number(options, "momentum", where)
        check_number(options, "dampening", where, low=None)  # any value, as torch
        check_number(options, "weight_decay", where)
        if options["nesterov"] and (options["momentum"] <= 0 or options["dampening"] != 0):
            raise ValueError(f"{where}: nesterov=True requires momentum > 0 and dampening = 0, got "
                             f"momentum={options['momentum']!r}, dampening={options['dampening']!r}")

    def _update(self, p, grad, group):
        t = p.data.dtype.type  # hyperparameters in p's dtype, so float32 stays float32
        momentum = group["momentum"]
        if group["maximize"]:
            grad = -grad
        if group["weight_decay"] != 0:
            grad = grad + t(group["weight_decay"]) * p.data
        if momentum != 0:
            state = self.state.setdefault(p, {})
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()
            else:
                buf *= t(momentum)
                buf += t(1 - group["dampening"]) * grad
            grad = grad + t(momentum) * buf if group["nesterov"] else buf
        p.data -= t(group["lr"]) * grad
