"""Learning-rate schedules (``torch.optim.lr_scheduler``), value for value.

A scheduler changes ``group['lr']`` of every parameter group of its optimizer. It is
made *after* the optimizer, which it sets to the schedule's first learning rate, and
stepped *after* ``optimizer.step()``, once per epoch or once per batch::

    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    warmup = LinearLR(opt, start_factor=0.1, total_iters=5)
    cosine = CosineAnnealingLR(opt, T_max=95)
    sched = SequentialLR(opt, [warmup, cosine], milestones=[5])
    for epoch in range(100):
        train_one_epoch(model, opt)
        sched.step()

Most schedules are computed recursively from the current ``group['lr']`` (as torch
does, so other changes to the learning rate compose); ``base_lrs`` are the groups'
``'initial_lr'``, set by the first scheduler made on the optimizer.
"""
from __future__ import annotations

import copy
import math
import numbers
from bisect import bisect_right

from .._errors import positive_int
from .optimizer import Optimizer


def _check_optimizer(optimizer, where):
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{where}: optimizer must be a cnnlab.optim.Optimizer, got {type(optimizer).__name__}")


def _per_group(value, name, optimizer, where) -> list:
    """One value per parameter group: a list as long as the groups, or one value for all."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(optimizer.param_groups):
            raise ValueError(f"{where}: {name} has {len(value)} values but the optimizer has "
                             f"{len(optimizer.param_groups)} parameter groups")
        return list(value)
    return [value] * len(optimizer.param_groups)


class LRScheduler:
    """Base class: subclasses write ``get_lr()``, the learning rates after
    ``last_epoch`` steps, and optionally ``_get_closed_form_lr()``, the same as a
    function of ``last_epoch`` alone (used by :class:`SequentialLR` when it hands over).

    Attributes:
        optimizer: the optimizer whose learning rates are set.
        last_epoch: how many times ``step()`` has been called (0 right after construction).
        base_lrs: each group's ``'initial_lr'``.
    """

    _not_saved = ("optimizer", "_is_initial")

    def __init__(self, optimizer):
        _check_optimizer(optimizer, type(self).__name__)
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = -1
        self._initial_step()

    def _initial_step(self):
        """The step made at construction: last_epoch becomes 0, the first lr is set."""
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self) -> list:
        raise NotImplementedError

    def step(self) -> None:
        """Advance the schedule by one epoch (or batch) and set the new learning rates."""
        self._step_count += 1
        self._update_lr()

    def _update_lr(self, epoch=None):
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            self.last_epoch = epoch
            closed_form = getattr(self, "_get_closed_form_lr", None)
            values = closed_form() if closed_form is not None else self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = self._group_lrs()

    def _group_lrs(self) -> list:
        return [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list:
        """The learning rate of each parameter group, as last set by this scheduler."""
        return list(self._last_lr)

    def state_dict(self) -> dict:
        """Everything but the optimizer, as plain data (numbers, strings, lists, dicts)."""
        return copy.deepcopy({k: v for k, v in vars(self).items() if k not in self._not_saved})

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` returned; the keys must be this scheduler's."""
        where = f"{type(self).__name__}.load_state_dict"
        own = set(self.state_dict())
        missing, unexpected = sorted(own - set(state_dict)), sorted(set(state_dict) - own)
        if missing or unexpected:
            raise ValueError(f"{where}: missing keys {missing}, unexpected keys {unexpected} "
                             f"(is it the state of another scheduler?)")
        if len(state_dict["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(f"{where}: the state_dict has {len(state_dict['base_lrs'])} base_lrs, "
                             f"the optimizer has {len(self.optimizer.param_groups)} parameter groups")
        self.__dict__.update(copy.deepcopy(state_dict))


class LambdaLR(LRScheduler):
    """lr = initial_lr * lr_lambda(last_epoch).

    Args:
        optimizer: the optimizer.
        lr_lambda: a function of the epoch, or a list of them, one per parameter group.

    The functions are not part of ``state_dict()``: make the scheduler again with the
    same functions, then load the state.
    """

    _not_saved = LRScheduler._not_saved + ("lr_lambdas",)

    def __init__(self, optimizer, lr_lambda):
        where = type(self).__name__
        _check_optimizer(optimizer, where)
        n = len(optimizer.param_groups)
        self.lr_lambdas = list(lr_lambda) if isinstance(lr_lambda, (list, tuple)) else [lr_lambda] * n
        if len(self.lr_lambdas) != n:
            raise ValueError(f"{where}: expected {n} lr_lambdas (one per parameter group), got {len(self.lr_lambdas)}")
        for fn in self.lr_lambdas:
            if not callable(fn):
                raise TypeError(f"{where}: lr_lambda must be a function of the epoch, got {type(fn).__name__}")
        super().__init__(optimizer)

    def get_lr(self):
        return [base_lr * fn(self.last_epoch) for fn, base_lr in zip(self.lr_lambdas, self.base_lrs)]


class StepLR(LRScheduler):
    """lr = initial_lr * gamma ** (last_epoch // step_size): multiplied by gamma every
    ``step_size`` epochs.

    Args:
        optimizer: the optimizer.
        step_size: epochs between decays.
        gamma: the factor. Default 0.1.
    """

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = positive_int(step_size, "step_size", type(self).__name__)
        self.gamma = gamma
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._group_lrs()
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * self.gamma ** (self.last_epoch // self.step_size) for base_lr in self.base_lrs]


class MultiStepLR(LRScheduler):
    """lr multiplied by gamma at each milestone (twice if it is listed twice).

    Args:
        optimizer: the optimizer.
        milestones: epochs at which to decay, e.g. [30, 80].
        gamma: the factor. Default 0.1.
    """

    def __init__(self, optimizer, milestones, gamma=0.1):
        milestones = list(milestones)
        for m in milestones:
            if not isinstance(m, numbers.Integral) or isinstance(m, bool):
                raise ValueError(f"{type(self).__name__}: milestones must be ints, got {milestones!r}")
        self.milestones = sorted(int(m) for m in milestones)  # a sorted list (torch: a Counter)
        self.gamma = gamma
        super().__init__(optimizer)

    def get_lr(self):
        times = self.milestones.count(self.last_epoch)
        if times == 0:
            return self._group_lrs()
        return [group["lr"] * self.gamma ** times for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * self.gamma ** bisect_right(self.milestones, self.last_epoch) for base_lr in self.base_lrs]


class LinearLR(LRScheduler):
    """lr goes linearly from initial_lr * start_factor to initial_lr * end_factor over
    ``total_iters`` steps, then stays: the usual warm-up.

    Args:
        optimizer: the optimizer.
        start_factor: in (0, 1]. Default 1/3.
        end_factor: in [0, 1]. Default 1.0.
        total_iters: steps to get there. Default 5.
    """

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
        where = type(self).__name__
        if not 0 < start_factor <= 1:
            raise ValueError(f"{where}: start_factor must be in (0, 1], got {start_factor!r}")
        if not 0 <= end_factor <= 1:
            raise ValueError(f"{where}: end_factor must be in [0, 1], got {end_factor!r}")
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = positive_int(total_iters, "total_iters", where)
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch == 0:
            return [group["lr"] * self.start_factor for group in self.optimizer.param_groups]
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._group_lrs()
        # the ratio of this step's factor to the last one's
        delta = self.end_factor - self.start_factor
        ratio = 1.0 + delta / (self.total_iters * self.start_factor + (self.last_epoch - 1) * delta)
        return [group["lr"] * ratio for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * (self.start_factor + (self.end_factor - self.start_factor)
                           * min(self.total_iters, self.last_epoch) / self.total_iters)
                for base_lr in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    r"""Cosine annealing from initial_lr down to eta_min over T_max steps (SGDR without
    restarts)::

        lr_t = eta_min + (initial_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2

    ``step()`` computes it recursively from the current lr, as torch does,

        lr_t = eta_min + (lr_{t-1} - eta_min) * (1 + cos(pi t / T_max)) / (1 + cos(pi (t-1) / T_max)),

    which equals the closed form when nothing else changes the lr, and composes with
    other schedulers when something does. Past T_max the lr rises again (a cosine wave).

    Args:
        optimizer: the optimizer.
        T_max: steps from the top to the bottom.
        eta_min: the lowest learning rate. Default 0.
    """

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max = positive_int(T_max, "T_max", type(self).__name__)
        self.eta_min = eta_min
        super().__init__(optimizer)

    def get_lr(self):
        groups = self.optimizer.param_groups
        if self._is_initial:
            return self._group_lrs()
        if (self.last_epoch - 1 - self.T_max) % (2 * self.T_max) == 0:
            # leaving the bottom of the wave, where the recursion would divide by zero
            return [group["lr"] + (base_lr - self.eta_min) * (1 - math.cos(math.pi / self.T_max)) / 2
                    for base_lr, group in zip(self.base_lrs, groups)]
        return [(1 + math.cos(math.pi * self.last_epoch / self.T_max))
                / (1 + math.cos(math.pi * (self.last_epoch - 1) / self.T_max))
                * (group["lr"] - self.eta_min) + self.eta_min
                for group in groups]

    def _get_closed_form_lr(self):
        return [self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base_lr in self.base_lrs]


class OneCycleLR(LRScheduler):
    r"""The 1cycle policy (Smith & Topin): lr rises from max_lr / div_factor to max_lr
    over the first ``pct_start`` of the run, then falls to max_lr / (div_factor *
    final_div_factor); momentum (SGD's momentum, Adam's beta1) moves the opposite way,
    between max_momentum and base_momentum. Stepped after every *batch*.

    Phases, for ``total_steps`` = T and pct_start = p (each annealed by ``anneal_strategy``)::

        two phases:   [0, pT - 1]       initial_lr -> max_lr,   max_momentum -> base_momentum
                      [pT - 1, T - 1]   max_lr -> min_lr,       base_momentum -> max_momentum
        three_phase:  [0, pT - 1]       initial_lr -> max_lr,   max_momentum -> base_momentum
                      [pT - 1, 2pT - 2] max_lr -> initial_lr,   base_momentum -> max_momentum
                      [2pT - 2, T - 1]  initial_lr -> min_lr,   momentum stays at max_momentum

    with 'cos' annealing ``end + (start - end) / 2 * (1 + cos(pi * pct))`` or 'linear'
    ``start + (end - start) * pct``, pct the fraction of the phase done.

    Args:
        optimizer: the optimizer.
        max_lr: the peak learning rate, or a list, one per parameter group.
        total_steps: steps in the cycle; or give ``epochs`` and ``steps_per_epoch``.
        pct_start: fraction of the cycle spent increasing the lr. Default 0.3.
        anneal_strategy: 'cos' (default) or 'linear'.
        cycle_momentum: also cycle the momentum. Default True.
        base_momentum, max_momentum: its range (or lists, one per group). Default 0.85, 0.95.
        div_factor: initial_lr = max_lr / div_factor. Default 25.
        final_div_factor: min_lr = initial_lr / final_div_factor. Default 1e4.
        three_phase: come back down to initial_lr before the final annealing. Default False.

    Sets ``'initial_lr'``, ``'max_lr'``, ``'min_lr'`` (and ``'max_momentum'``,
    ``'base_momentum'``) in every parameter group, as torch does.
    """

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None, pct_start=0.3,
                 anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85, max_momentum=0.95,
                 div_factor=25.0, final_div_factor=1e4, three_phase=False):
        where = type(self).__name__
        _check_optimizer(optimizer, where)
        if total_steps is not None:
            self.total_steps = positive_int(total_steps, "total_steps", where)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = (positive_int(epochs, "epochs", where)
                                * positive_int(steps_per_epoch, "steps_per_epoch", where))
        else:
            raise ValueError(f"{where}: give either total_steps, or both epochs and steps_per_epoch")
        if not isinstance(pct_start, numbers.Real) or not 0 <= pct_start <= 1:
            raise ValueError(f"{where}: pct_start must be a number in [0, 1], got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"{where}: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy

        up_end = float(pct_start * self.total_steps) - 1
        if three_phase:
            self._schedule_phases = [
                dict(end_step=up_end, start_lr="initial_lr", end_lr="max_lr",
                     start_momentum="max_momentum", end_momentum="base_momentum"),
                dict(end_step=float(2 * pct_start * self.total_steps) - 2, start_lr="max_lr", end_lr="initial_lr",
                     start_momentum="base_momentum", end_momentum="max_momentum"),
                dict(end_step=self.total_steps - 1, start_lr="initial_lr", end_lr="min_lr",
                     start_momentum="max_momentum", end_momentum="max_momentum"),
            ]
        else:
            self._schedule_phases = [
                dict(end_step=up_end, start_lr="initial_lr", end_lr="max_lr",
                     start_momentum="max_momentum", end_momentum="base_momentum"),
                dict(end_step=self.total_steps - 1, start_lr="max_lr", end_lr="min_lr",
                     start_momentum="base_momentum", end_momentum="max_momentum"),
            ]

        for group, peak in zip(optimizer.param_groups, _per_group(max_lr, "max_lr", optimizer, where)):
            group["initial_lr"] = peak / div_factor
            group["max_lr"] = peak
            group["min_lr"] = group["initial_lr"] / final_div_factor

        self.cycle_momentum = bool(cycle_momentum)
        if self.cycle_momentum:
            if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
                raise ValueError(f"{where}: cycle_momentum=True needs an optimizer with momentum or betas, "
                                 f"got {type(optimizer).__name__}")
            self.use_beta1 = "betas" in optimizer.defaults
            highs = _per_group(max_momentum, "max_momentum", optimizer, where)
            lows = _per_group(base_momentum, "base_momentum", optimizer, where)
            for high, low, group in zip(highs, lows, optimizer.param_groups):
                self._set_momentum(group, high)
                group["max_momentum"] = high
                group["base_momentum"] = low
        super().__init__(optimizer)

    def _set_momentum(self, group, value):
        if self.use_beta1:
            group["betas"] = (value, *group["betas"][1:])
        else:
            group["momentum"] = value

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self):
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(f"{type(self).__name__}: tried to step {step} times, but total_steps is "
                             f"{self.total_steps}")
        lrs = []
        for group in self.optimizer.param_groups:
            start_step = 0.0
            for i, phase in enumerate(self._schedule_phases):
                end_step = phase["end_step"]
                if step <= end_step or i == len(self._schedule_phases) - 1:
                    pct = (step - start_step) / (end_step - start_step)
                    lrs.append(self._anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct))
                    if self.cycle_momentum:
                        self._set_momentum(group, self._anneal(group[phase["start_momentum"]],
                                                               group[phase["end_momentum"]], pct))
                    break
                start_step = end_step
        return lrs


class SequentialLR(LRScheduler):
    """Runs ``schedulers[0]`` until ``milestones[0]``, then ``schedulers[1]`` (started
    afresh from its first value) until ``milestones[1]``, and so on: e.g. a linear warm-up
    followed by cosine annealing.

    Args:
        optimizer: the optimizer, the same as every scheduler's.
        schedulers: the schedulers, made on ``optimizer`` beforehand.
        milestones: the steps at which to hand over; one fewer than the schedulers.

    Its state_dict holds each scheduler's under ``'_schedulers'``.
    """

    _not_saved = ("optimizer", "_schedulers")

    def __init__(self, optimizer, schedulers, milestones):
        where = type(self).__name__
        schedulers, milestones = list(schedulers), list(milestones)
        if not schedulers:
            raise ValueError(f"{where}: expected at least one scheduler, got none")
        for i, s in enumerate(schedulers):
            if not isinstance(s, LRScheduler):
                raise TypeError(f"{where}: schedulers[{i}] must be a scheduler, got {type(s).__name__}")
            if s.optimizer is not optimizer:
                raise ValueError(f"{where}: schedulers[{i}] ({type(s).__name__}) belongs to another optimizer")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"{where}: expected {len(schedulers) - 1} milestones for {len(schedulers)} "
                             f"schedulers, got {len(milestones)}")
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = 0
        self.optimizer = optimizer
        # undo what constructing the schedulers did, then start the first one again
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self._undo(self)
        first = self._schedulers[bisect_right(self._milestones, 0)]
        first._initial_step()
        self._last_lr = first.get_last_lr()

    def _undo(self, scheduler):
        if isinstance(scheduler, SequentialLR):
            for s in scheduler._schedulers:
                self._undo(s)
        else:
            scheduler.last_epoch -= 1

    def step(self):
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)  # the next scheduler starts at its epoch 0 (its closed form)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def state_dict(self):
        state = copy.deepcopy({k: v for k, v in vars(self).items() if k not in self._not_saved})
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict):
        where = f"{type(self).__name__}.load_state_dict"
        saved = state_dict.get("_schedulers", [])
        if len(saved) != len(self._schedulers):
            raise ValueError(f"{where}: the state_dict has {len(saved)} schedulers, this one {len(self._schedulers)}")
        for s, st in zip(self._schedulers, saved):
            s.load_state_dict(st)
        self.__dict__.update(copy.deepcopy({k: v for k, v in state_dict.items() if k != "_schedulers"}))
