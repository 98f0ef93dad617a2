"""Adam and AdamW: steps scaled by running estimates of the gradient's first two moments."""
from __future__ import annotations

import numbers

import numpy as np

from .optimizer import Optimizer, check_number


class Adam(Optimizer):
    r"""Adam (``torch.optim.Adam``, the same update step for step), optionally AMSGrad.

    For each parameter p with gradient g, at its t-th update (t = 1, 2, ...)::

        g   <- -g                                    if maximize
        p   <- p * (1 - lr * weight_decay)           if decoupled_weight_decay (AdamW)
        g   <- g + weight_decay * p                  otherwise (L2 penalty, through the gradient)
        m   <- m + (1 - beta1) * (g - m)             first moment  (= beta1 m + (1 - beta1) g)
        v   <- beta2 * v + (1 - beta2) * g * g       second moment
        v'  <- max(v', v) if amsgrad, else v'  = v
        p   <- p - lr / (1 - beta1^t) * m / (sqrt(v') / sqrt(1 - beta2^t) + eps)

    m and v start at zero, so early on they are biased towards zero; dividing by
    (1 - beta^t) removes that bias. Note that eps is added *after* the bias correction of v.

    Args:
        params: an iterable of Tensors, or of parameter-group dicts (see :class:`Optimizer`).
        lr: learning rate. Default 1e-3.
        betas: (beta1, beta2), each in [0, 1): decay rates of m and v. Default (0.9, 0.999).
        eps: added to the denominator for numerical stability. Default 1e-8.
        weight_decay: Default 0.
        amsgrad: divide by the largest v seen so far (AMSGrad). Default False.
        maximize: ascend the objective instead of descending it. Default False.
        decoupled_weight_decay: shrink the weights directly instead of adding the L2
            gradient (this is AdamW). Default False.

    State (per parameter): ``'step'`` (int t), ``'exp_avg'`` (m), ``'exp_avg_sq'`` (v) and,
    with amsgrad, ``'max_exp_avg_sq'`` (v'), each array like p.

    Example:
        >>> opt = Adam(model.parameters(), lr=3e-4)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 maximize=False, decoupled_weight_decay=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def _check(self, options, where):
        check_number(options, "lr", where)
        check_number(options, "eps", where)
        check_number(options, "weight_decay", where)
        betas = options["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2
                and all(isinstance(b, numbers.Real) and not isinstance(b, bool) for b in betas)):
            raise TypeError(f"{where}: betas must be a pair of numbers (beta1, beta2), got {betas!r}")
        for i, b in enumerate(betas):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{where}: betas[{i}] must be in [0, 1), got {b!r} (betas={tuple(betas)!r})")
        options["betas"] = tuple(betas)  # normalised once: a list (from JSON) becomes a tuple

    def _update(self, p, grad, group):
        t = p.data.dtype.type  # hyperparameters in p's dtype, so float32 stays float32
        lr, weight_decay = group["lr"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        state = self.state.setdefault(p, {})
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(p.data)
        state["step"] += 1
        step = state["step"]

        if group["maximize"]:
            grad = -grad
        if weight_decay != 0:
            if group["decoupled_weight_decay"]:
                p.data *= t(1 - lr * weight_decay)
            else:
                grad = grad + t(weight_decay) * p.data
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += t(1 - beta1) * (grad - m)  # torch's lerp towards g, in place
        v *= t(beta2)
        v += t(1 - beta2) * grad * grad
        if group["amsgrad"]:
            v = np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])

        # the bias corrections are scalars, computed in Python floats as torch does
        step_size = lr / (1 - beta1 ** step)
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        denom = np.sqrt(v) / t(bias_correction2_sqrt) + t(group["eps"])
        p.data -= t(step_size) * (m / denom)


class AdamW(Adam):
    r"""AdamW (``torch.optim.AdamW``): Adam with decoupled weight decay.

    The weights shrink directly, ``p <- p * (1 - lr * weight_decay)``, before the Adam
    step, instead of an L2 term being added to g; so the decay is not rescaled by
    1 / sqrt(v) and acts the same on every weight. Otherwise exactly :class:`Adam` (see
    its formula), with ``weight_decay`` defaulting to 1e-2.

    Args:
        params, lr, betas, eps, amsgrad, maximize: as in :class:`Adam`.
        weight_decay: decoupled weight decay coefficient. Default 1e-2.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True)

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # as torch: an AdamW always decouples, whatever was saved
            group["decoupled_weight_decay"] = True
