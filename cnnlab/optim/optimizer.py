"""The base of every optimizer: parameter groups, per-parameter state, and state_dict.

An optimizer holds ``param_groups``, a list of dicts, each with ``'params'`` (a list of
tensors) and every option (``'lr'``, ``'momentum'``...), so different parts of a model can
be trained with different settings; and ``state``, a dict from each parameter to its own
running values (a momentum buffer, Adam's moment estimates). A subclass writes
``_update(p, grad, group)``, the update of one parameter, and ``_check(options, where)``,
the check of its options.
"""
from __future__ import annotations

import copy
import numbers

import numpy as np

from ..autograd import Tensor, enable_grad


class Optimizer:
    """Base class of the optimizers (``torch.optim.Optimizer``'s interface).

    Args:
        params: an iterable of Tensors (``model.parameters()``), or of dicts, one per
            parameter group: ``{'params': [...], 'lr': 0.1, ...}``; options a group does
            not set are taken from ``defaults``.
        defaults: every option of the optimizer, with its default value.

    Attributes:
        param_groups: list of dicts, each with ``'params'`` and every option (plus
            ``'initial_lr'`` and friends once a learning-rate scheduler has set them).
        state: dict from parameter to a dict of its running state, filled on the first
            step that parameter gets a gradient.
    """

    _scalar_state = ("step",)  # state entries that are numbers; every other entry is an array like the parameter

    def __init__(self, params, defaults: dict):
        where = type(self).__name__
        self._check(defaults, where)
        self.defaults = dict(defaults)
        self.state = {}
        self.param_groups = []
        if isinstance(params, (Tensor, dict, set, frozenset)):
            raise TypeError(f"{where}: params must be a list (or other ordered iterable) of Tensors or of "
                            f"parameter-group dicts, got {type(params).__name__}")
        groups = list(params)
        if not groups:
            raise ValueError(f"{where}: got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # ----- subclasses fill these in -----
    def _check(self, options: dict, where: str) -> None:
        """Raise ValueError/TypeError for a bad option value."""

    def _update(self, p: Tensor, grad: np.ndarray, group: dict) -> None:
        """Update ``p.data`` in place from ``grad`` (already in p's dtype)."""
        raise NotImplementedError

    # ----- the public interface -----
    def add_param_group(self, param_group: dict) -> None:
        """Add a group of parameters with its own options (e.g. when unfreezing layers)."""
        where = f"{type(self).__name__}: parameter group {len(self.param_groups)}"
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError(f"{where}: expected a dict with a 'params' entry, got {param_group!r:.80}")
        group = dict(param_group)
        params = group["params"]
        if isinstance(params, (set, frozenset)):
            raise TypeError(f"{where}: params must be an ordered collection (a list), not a set, "
                            f"so that state_dict indices are the same in every run")
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        for i, p in enumerate(group["params"]):
            if not isinstance(p, Tensor):
                raise TypeError(f"{where}: params[{i}] must be a cnnlab Tensor or Parameter, got {type(p).__name__}")
            if p.data.dtype.kind != "f":
                raise TypeError(f"{where}: params[{i}] must be floating point, got dtype {p.data.dtype}")
            if not p.is_leaf:
                raise ValueError(f"{where}: params[{i}] is not a leaf tensor (it is the result of an op), "
                                 f"so it cannot be optimized")
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        self._check(group, where)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        ids = [id(p) for p in group["params"]]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{where}: a parameter appears twice in the group")
        if seen & set(ids):
            raise ValueError(f"{where}: some parameters are already in another parameter group")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget every parameter's gradient (``p.grad = None``; zeros with ``set_to_none=False``)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad = np.zeros_like(p.data)

    def step(self, closure=None):
        """Update every parameter that has a gradient; parameters whose ``.grad`` is None
        are skipped (their state does not advance). ``closure``, if given, is called first
        (with gradients recorded) and its result, the loss, is returned."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for g, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                grad = np.asarray(p.grad.data if isinstance(p.grad, Tensor) else p.grad)
                if grad.shape != p.data.shape:
                    raise ValueError(f"{type(self).__name__}.step: parameter group {g}, params[{i}] has shape "
                                     f"{p.data.shape} but its grad has shape {grad.shape}")
                # the update is computed in the parameter's dtype: a float32 model stays float32
                self._update(p, grad.astype(p.data.dtype, copy=False), group)
        return loss

    def state_dict(self) -> dict:
        """The optimizer's state as plain data, like torch's::

            {'state': {param_index: {name: ndarray copy or Python number}},
             'param_groups': [{option: value, ..., 'params': [param_index, ...]}, ...]}

        Parameters are numbered 0, 1, ... across the groups in order; the parameters
        themselves are not saved. Arrays are copies, so later steps do not change it."""
        index = {}
        groups = []
        for group in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {}
        for p, values in self.state.items():
            state[index[id(p)]] = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in values.items()}
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` returned (possibly after a trip through JSON:
        string keys and lists for tuples are accepted). The number of groups and of
        parameters in each must match; arrays are copied in each parameter's dtype.
        Everything is checked before anything changes."""
        where = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(f"{where}: expected a dict with 'state' and 'param_groups', got "
                             f"{sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__}")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{where}: the state_dict has {len(saved_groups)} parameter groups, "
                             f"this optimizer has {len(self.param_groups)}")
        by_index = {}
        new_groups = []
        for g, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{where}: parameter group {g} has {len(saved['params'])} parameters in the "
                                 f"state_dict but {len(group['params'])} in this optimizer")
            missing = [k for k in self.defaults if k not in saved]
            if missing:
                raise ValueError(f"{where}: parameter group {g} of the state_dict has no {', '.join(missing)} "
                                 f"(is it the state of another kind of optimizer?)")
            by_index.update(zip((int(i) for i in saved["params"]), group["params"]))
            new = {k: _restore_option(v, group.get(k)) for k, v in saved.items() if k != "params"}
            new["params"] = group["params"]
            self._check(new, f"{where}: parameter group {g}")
            new_groups.append(new)
        new_state = {}
        for key, values in state_dict["state"].items():
            p = by_index.get(int(key)) if str(key).isdigit() else None
            if p is None:
                raise ValueError(f"{where}: the state_dict has state for parameter {key}, which is in none "
                                 f"of its parameter groups")
            new_state[p] = {name: self._restore_state(name, v, p, f"{where}: state of parameter {key}")
                            for name, v in values.items()}
        self.param_groups = new_groups
        self.state = new_state

    def _restore_state(self, name, value, p, where):
        if name in self._scalar_state:
            return value.item() if isinstance(value, (np.ndarray, np.generic)) else value
        value = np.asarray(value)
        if value.shape != p.data.shape:
            raise ValueError(f"{where}: {name!r} has shape {value.shape}, the parameter {p.data.shape}")
        return np.array(value, dtype=p.data.dtype, copy=True)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {group[k]}" for k in sorted(group) if k != "params"]
        return "\n".join(lines + [")"])


def _restore_option(value, current):
    if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
        value = value.item()
    if isinstance(current, tuple) and isinstance(value, list):  # JSON turned a tuple (betas) into a list
        value = tuple(value)
    return copy.deepcopy(value)


# ----- option checks shared by the optimizers -----
def check_number(options: dict, name: str, where: str, low: float = 0.0, high: float = None) -> None:
    """``options[name]`` must be a real number in [low, high) (>= low without high; any
    number with low=None). Written ``not low <= value`` so that NaN fails too."""
    value = options[name]
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be a number, got {value!r}")
    if low is None:
        return
    if high is None and not low <= value:
        raise ValueError(f"{where}: {name} must be >= {low}, got {value!r}")
    if high is not None and not low <= value < high:
        raise ValueError(f"{where}: {name} must be in [{low}, {high}), got {value!r}")
