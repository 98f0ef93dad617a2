"""cnnlab.optim against torch.optim, step by step.

The same initial arrays go into a cnnlab optimizer and its torch twin; at every step both
get the gradient of the same quadratic loss at their *own* current parameters (plus the
same noise), so any difference would feed back and grow; parameters are compared after
every step (relative error 1e-12 in float64, 1e-6 in float32). Some parameters get no
gradient at some steps (``grad = None``), which both must skip. Schedulers: the learning
rates (and OneCycleLR's momentum) must *equal* torch's at every step, with the optimizer
stepping along. Then: state_dict round trips through a JSON + arrays checkpoint mid-run,
dtypes, and the errors for bad hyperparameters and mismatched state.
"""
import json

import numpy as np
import pytest
import torch

import cnnlab
from cnnlab import functional as F, nn, optim
from cnnlab.optim import lr_scheduler

TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-6}
SHAPES = [(3, 4), (5,), (2, 3, 2)]


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def skipped(step) -> set:
    """Parameters without a gradient at this step: the third one until step 3 (its state
    starts late), the second one every fourth step."""
    return {i for i, off in ((2, step < 3), (1, step % 4 == 1)) if off}


class Twins:
    """The same parameters as cnnlab Parameters and torch leaf tensors."""

    def __init__(self, dtype=np.float64, seed=0):
        rng = np.random.default_rng(seed)
        arrays = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        self.ours = [nn.Parameter(a.copy()) for a in arrays]
        self.theirs = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
        self.curvature = [rng.uniform(0.5, 2.0, s) for s in SHAPES]
        self.rng = np.random.default_rng(seed + 1)
        self.buffers = [p.data for p in self.ours]  # updates must be in place

    def set_grads(self, step):
        """Gradient of sum(c p^2 / 2) at each side's own parameters, plus shared noise."""
        off = skipped(step)
        for i, (p, tp, c) in enumerate(zip(self.ours, self.theirs, self.curvature)):
            noise = self.rng.standard_normal(p.shape)
            if i in off:
                p.grad, tp.grad = None, None
                continue
            p.grad = (c * p.data + noise).astype(p.data.dtype)
            tp.grad = torch.from_numpy((c * tp.detach().numpy() + noise).astype(p.data.dtype))

    def compare(self, where):
        for i, (p, tp, buf) in enumerate(zip(self.ours, self.theirs, self.buffers)):
            assert p.data is buf, f"{where}: parameter {i} was replaced, not updated in place"
            assert p.data.dtype == buf.dtype, f"{where}: parameter {i} changed dtype to {p.data.dtype}"
            err = rel(p.data, tp.detach().numpy())
            assert err <= TOL[p.data.dtype], f"{where}: parameter {i} relative error {err:.3g}"


def groups(params, spec):
    """``spec``: None for a flat list, or [(parameter indices, options), ...]."""
    if spec is None:
        return list(params)
    return [dict(opts, params=[params[i] for i in idx]) for idx, opts in spec]


def make_pair(name, twins, spec, kwargs):
    return (getattr(optim, name)(groups(twins.ours, spec), **kwargs),
            getattr(torch.optim, name)(groups(twins.theirs, spec), **kwargs))


def compare_state_dicts(ours, theirs):
    """Same parameter indices, state entries and option values as torch's state_dict."""
    a, b = ours.state_dict(), theirs.state_dict()
    assert a["state"].keys() == b["state"].keys()
    for k, st in a["state"].items():
        assert st.keys() == b["state"][k].keys(), k
        for name, v in st.items():
            tv = b["state"][k][name]
            if name == "step":
                assert isinstance(v, int) and v == int(tv.item())
            else:
                assert isinstance(v, np.ndarray) and rel(v, tv.numpy()) <= TOL[v.dtype], (k, name)
    for ga, gb in zip(a["param_groups"], b["param_groups"]):
        assert ga["params"] == gb["params"]
        for key, v in ga.items():
            assert v == gb[key], key


# ----- optimizers ------------------------------------------------------------------------
OPTIMIZER_CASES = [
    ("SGD", {}),
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.1, weight_decay=0.1)),
    ("SGD", dict(lr=0.1, maximize=True)),
    ("SGD", dict(lr=0.05, momentum=0.8, weight_decay=0.05, nesterov=True, maximize=True)),
    ("SGD", dict(lr=0.1, momentum=0.5, dampening=0.5, weight_decay=0.2, maximize=True)),
    ("Adam", {}),
    ("Adam", dict(lr=0.01, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.01, maximize=True)),
    ("Adam", dict(lr=0.02, betas=(0.3, 0.8), eps=1e-3, weight_decay=0.05, amsgrad=True, maximize=True)),
    ("AdamW", {}),
    ("AdamW", dict(lr=0.01, weight_decay=0.5)),
    ("AdamW", dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1, amsgrad=True, maximize=True)),
]

GROUP_CASES = [
    ("SGD", [([0], dict(lr=0.2, momentum=0.9)), ([1, 2], dict(weight_decay=0.1, momentum=0.5, nesterov=True))],
     dict(lr=0.05)),
    ("SGD", [([2], dict(maximize=True)), ([0], dict(momentum=0.9, dampening=0.5)), ([1], {})], dict(lr=0.1)),
    ("Adam", [([0, 1], dict(lr=0.05, amsgrad=True)), ([2], dict(betas=(0.5, 0.99), weight_decay=0.1))],
     dict(lr=0.01)),
    ("AdamW", [([1], dict(weight_decay=0.0)), ([0, 2], dict(lr=0.03, weight_decay=0.2, amsgrad=True))], {}),
]


def case_id(case):
    return case[0] + "(" + ",".join(f"{k}={v}" for k, v in case[-1].items()) + ")"


def run_parity(name, spec, kwargs, dtype, steps=25):
    twins = Twins(dtype)
    ours, theirs = make_pair(name, twins, spec, kwargs)
    for step in range(steps):
        twins.set_grads(step)
        ours.step()
        theirs.step()
        twins.compare(f"{name} step {step}")
    compare_state_dicts(ours, theirs)
    return ours


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=[case_id(c) for c in OPTIMIZER_CASES])
def test_optimizer_matches_torch(case, dtype):
    name, kwargs = case
    run_parity(name, None, kwargs, dtype)


@pytest.mark.parametrize("case", GROUP_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(GROUP_CASES)])
def test_parameter_groups_match_torch(case, dtype):
    name, spec, kwargs = case
    ours = run_parity(name, spec, kwargs, dtype)
    assert [len(g["params"]) for g in ours.param_groups] == [len(idx) for idx, _ in spec]


def test_add_param_group_mid_run_matches_torch():
    twins = Twins()
    ours, theirs = make_pair("Adam", twins, [([0, 1], {})], dict(lr=0.05))
    for step in range(20):
        if step == 6:  # unfreeze the last parameter, with its own options
            ours.add_param_group({"params": twins.ours[2], "lr": 0.1, "amsgrad": True})
            theirs.add_param_group({"params": twins.theirs[2], "lr": 0.1, "amsgrad": True})
        twins.set_grads(step + 3)  # +3: every parameter gets gradients from the start
        if step < 6:
            twins.ours[2].grad = twins.theirs[2].grad = None
        ours.step()
        theirs.step()
        twins.compare(f"step {step}")
    compare_state_dicts(ours, theirs)


@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
                                         ("Adam", dict(lr=0.01, amsgrad=True)), ("AdamW", dict(lr=0.01))])
def test_tiny_model_trains_like_torch(name, kwargs):
    """Real gradients: a two-layer network in both libraries, cross-entropy, 20 steps."""
    torch.manual_seed(0)
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).double()
    ours = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).to(np.float64)
    ours.load_state_dict({k: v.detach().numpy().copy() for k, v in theirs.state_dict().items()})
    opt = getattr(optim, name)(ours.parameters(), **kwargs)
    topt = getattr(torch.optim, name)(theirs.parameters(), **kwargs)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 4)), rng.integers(0, 3, 16)
    for step in range(20):
        opt.zero_grad()
        topt.zero_grad()
        F.cross_entropy(ours(cnnlab.Tensor(x)), cnnlab.Tensor(y)).backward()
        torch.nn.functional.cross_entropy(theirs(torch.tensor(x)), torch.tensor(y)).backward()
        opt.step()
        topt.step()
        tparams = dict(theirs.named_parameters())
        for pname, p in ours.named_parameters():
            # gradients through matmuls agree to rounding only, so allow a little more than 1e-12
            assert rel(p.data, tparams[pname].detach().numpy()) < 1e-10, (step, pname)


def test_zero_grad_and_closure():
    p = nn.Parameter(np.ones(3))
    opt = optim.SGD([p], lr=0.5)
    p.grad = np.ones(3)
    opt.zero_grad(set_to_none=False)
    assert np.array_equal(p.grad, np.zeros(3))
    opt.zero_grad()
    assert p.grad is None
    opt.step()  # no gradient: nothing happens
    assert np.array_equal(p.data, np.ones(3))

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 3.0
    assert np.array_equal(p.data, np.zeros(3))  # p - 0.5 * 2p


# ----- learning-rate schedulers ----------------------------------------------------------
SCHEDULERS = {
    "StepLR": lambda m, opt: m.StepLR(opt, step_size=3, gamma=0.5),
    "MultiStepLR": lambda m, opt: m.MultiStepLR(opt, milestones=[2, 9, 5, 5], gamma=0.3),
    "CosineAnnealingLR": lambda m, opt: m.CosineAnnealingLR(opt, T_max=10, eta_min=0.001),  # runs 3 T_max
    "LinearLR": lambda m, opt: m.LinearLR(opt),
    "LinearLR-warmup": lambda m, opt: m.LinearLR(opt, start_factor=0.1, total_iters=6),
    "LinearLR-decay": lambda m, opt: m.LinearLR(opt, start_factor=0.5, end_factor=0.2, total_iters=4),
    "LambdaLR": lambda m, opt: m.LambdaLR(opt, lambda e: 0.9 ** e),
    "LambdaLR-per-group": lambda m, opt: m.LambdaLR(opt, [lambda e: 1 / (e + 1), lambda e: 0.5 + 0.1 * (e % 3)]),
    "OneCycleLR": lambda m, opt: m.OneCycleLR(opt, max_lr=[0.1, 0.05], total_steps=31),
    "OneCycleLR-linear": lambda m, opt: m.OneCycleLR(
        opt, max_lr=0.1, epochs=3, steps_per_epoch=11, pct_start=0.25, anneal_strategy="linear",
        div_factor=10.0, final_div_factor=100.0),
    "OneCycleLR-three-phase": lambda m, opt: m.OneCycleLR(opt, max_lr=0.1, total_steps=31, three_phase=True),
    "OneCycleLR-three-phase-linear": lambda m, opt: m.OneCycleLR(
        opt, max_lr=[0.2, 0.1], total_steps=35, three_phase=True, anneal_strategy="linear",
        base_momentum=[0.8, 0.7], max_momentum=0.9),
    "OneCycleLR-no-momentum": lambda m, opt: m.OneCycleLR(opt, max_lr=0.1, total_steps=31, cycle_momentum=False),
    "SequentialLR-warmup-cosine": lambda m, opt: m.SequentialLR(
        opt, [m.LinearLR(opt, start_factor=0.1, total_iters=5), m.CosineAnnealingLR(opt, T_max=25, eta_min=1e-4)],
        milestones=[5]),
    "SequentialLR-three": lambda m, opt: m.SequentialLR(
        opt, [m.LinearLR(opt, start_factor=0.2, total_iters=3), m.StepLR(opt, 4, gamma=0.5),
              m.CosineAnnealingLR(opt, T_max=10)], milestones=[3, 12]),
    "SequentialLR-lambda-multistep": lambda m, opt: m.SequentialLR(
        opt, [m.LambdaLR(opt, lambda e: (e + 1) / 4), m.MultiStepLR(opt, [3, 6], gamma=0.5)], milestones=[4]),
}
SCHEDULER_OPTIMIZERS = {"SGD": dict(lr=0.1, momentum=0.9), "Adam": dict(lr=0.01, betas=(0.9, 0.99))}
TWO_GROUPS = [([0], dict(lr=0.1)), ([1, 2], dict(lr=0.02, weight_decay=0.01))]


def momenta(opt):
    return [g["betas"] if "betas" in g else g["momentum"] for g in opt.param_groups]


@pytest.mark.parametrize("opt_name", list(SCHEDULER_OPTIMIZERS))
@pytest.mark.parametrize("sched_name", list(SCHEDULERS))
def test_scheduler_matches_torch(sched_name, opt_name):
    twins = Twins()
    opt, topt = make_pair(opt_name, twins, TWO_GROUPS, SCHEDULER_OPTIMIZERS[opt_name])
    ours = SCHEDULERS[sched_name](lr_scheduler, opt)
    theirs = SCHEDULERS[sched_name](torch.optim.lr_scheduler, topt)
    for step in range(31):
        where = f"{sched_name} after {step} steps"
        assert ours.get_last_lr() == theirs.get_last_lr(), where
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in topt.param_groups], where
        assert momenta(opt) == momenta(topt), where
        assert ours.last_epoch == theirs.last_epoch
        twins.set_grads(step)
        opt.step()
        topt.step()
        twins.compare(where)
        ours.step()
        theirs.step()
    for g, tg in zip(opt.param_groups, topt.param_groups):  # 'initial_lr', 'max_lr', ... as torch sets them
        assert {k: v for k, v in g.items() if k != "params"}.items() <= tg.items()


def test_scheduler_state_dict_is_plain_data():
    """Numbers, strings, lists and dicts only (LambdaLR's functions are left out)."""
    for make in SCHEDULERS.values():
        opt = optim.SGD(groups(Twins().ours, TWO_GROUPS), lr=0.1, momentum=0.9)
        state = make(lr_scheduler, opt).state_dict()
        assert json.loads(json.dumps(state)) == state


# ----- state_dict round trips ------------------------------------------------------------
def through_checkpoint(state):
    """What a checkpoint writer does: arrays aside, everything else through JSON (so int
    keys become strings and tuples lists), then back together."""
    arrays = []

    def split(x):
        if isinstance(x, dict):
            return {k: split(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [split(v) for v in x]
        if isinstance(x, np.ndarray):
            arrays.append(x.copy())
            return {"__array__": len(arrays) - 1}
        return x

    def join(x):
        if isinstance(x, dict):
            return arrays[x["__array__"]] if set(x) == {"__array__"} else {k: join(v) for k, v in x.items()}
        if isinstance(x, list):
            return [join(v) for v in x]
        return x

    return join(json.loads(json.dumps(split(state))))


ROUND_TRIP_CASES = {
    "SGD-nesterov-groups+warmup-cosine": (
        "SGD", [([0, 2], dict(momentum=0.9, nesterov=True)), ([1], dict(lr=0.05, momentum=0.5, weight_decay=0.1))],
        dict(lr=0.1), SCHEDULERS["SequentialLR-warmup-cosine"]),
    "Adam-amsgrad+onecycle": ("Adam", None, dict(lr=0.01, amsgrad=True, weight_decay=0.01),
                              lambda m, opt: m.OneCycleLR(opt, max_lr=0.05, total_steps=20, three_phase=True)),
    "AdamW+multistep": ("AdamW", [([0], {}), ([1, 2], dict(betas=(0.8, 0.9)))], dict(lr=0.01),
                        SCHEDULERS["MultiStepLR"]),
    "SGD+lambda": ("SGD", None, dict(lr=0.1, momentum=0.9, dampening=0.1), SCHEDULERS["LambdaLR"]),
}


@pytest.mark.parametrize("case", list(ROUND_TRIP_CASES))
def test_state_dict_round_trip_mid_run(case):
    """Save after 7 steps, load into a fresh optimizer and scheduler, continue: the run
    must be bit for bit the uninterrupted one."""
    name, spec, kwargs, make_sched = ROUND_TRIP_CASES[case]
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(s) for s in SHAPES]
    noise = [[rng.standard_normal(s) for s in SHAPES] for _ in range(20)]

    def fresh(values):
        params = [nn.Parameter(v.copy()) for v in values]
        opt = getattr(optim, name)(groups(params, spec), **kwargs)
        return params, opt, make_sched(lr_scheduler, opt)

    def train(params, opt, sched, steps):
        for step in steps:
            for i, p in enumerate(params):
                p.grad = None if i in skipped(step) else p.data + noise[step][i]
            opt.step()
            sched.step()
            yield [p.data.copy() for p in params], sched.get_last_lr()

    whole = list(train(*fresh(start), range(20)))
    params, opt, sched = fresh(start)
    first = list(train(params, opt, sched, range(7)))
    opt_state, sched_state = through_checkpoint(opt.state_dict()), through_checkpoint(sched.state_dict())
    params, opt, sched = fresh([p.data for p in params])  # scheduler made before loading, as with torch
    opt.load_state_dict(opt_state)
    sched.load_state_dict(sched_state)
    resumed = first + list(train(params, opt, sched, range(7, 20)))
    for step, ((a, lr_a), (b, lr_b)) in enumerate(zip(whole, resumed)):
        assert lr_a == lr_b, step
        for x, y in zip(a, b):
            assert np.array_equal(x, y), step


def test_load_state_dict_restores_copies_in_the_parameters_dtype():
    src = Twins(np.float64)
    opt64 = optim.Adam(src.ours, lr=0.01, amsgrad=True)
    for step in range(3, 6):
        src.set_grads(step)
        opt64.step()
    state = opt64.state_dict()
    dst = Twins(np.float32)
    opt32 = optim.Adam(dst.ours, lr=0.01, amsgrad=True)
    opt32.load_state_dict(state)
    for i, p in enumerate(dst.ours):
        for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            arr = opt32.state[p][name]
            assert arr.dtype == np.float32 and arr.shape == p.shape
            assert not np.shares_memory(arr, state["state"][i][name])
        assert opt32.state[p]["step"] == opt64.state[src.ours[i]]["step"] > 0
    state["state"][0]["exp_avg"][...] = 99.0  # changing the source changes nothing loaded
    assert np.abs(opt32.state[dst.ours[0]]["exp_avg"]).max() < 99
    saved = opt64.state_dict()
    kept = saved["state"][0]["exp_avg"].copy()
    src.set_grads(6)
    opt64.step()  # nor does a later step change a state_dict already taken
    assert np.array_equal(saved["state"][0]["exp_avg"], kept)


def test_load_state_dict_errors_name_what_differs():
    t = Twins()
    two = optim.SGD([{"params": t.ours[:1]}, {"params": t.ours[1:]}], lr=0.1, momentum=0.9)
    t.set_grads(6)
    two.step()
    state = two.state_dict()
    one = optim.SGD(Twins().ours, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"SGD.load_state_dict: the state_dict has 2 parameter groups, "
                                         r"this optimizer has 1"):
        one.load_state_dict(state)
    swapped = optim.SGD([{"params": t.ours[:2]}, {"params": t.ours[2:]}], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"parameter group 0 has 1 parameters in the state_dict but 2 in this"):
        swapped.load_state_dict(state)
    bad = two.state_dict()
    bad["state"][1]["momentum_buffer"] = np.zeros(7)
    before = two.state_dict()
    with pytest.raises(ValueError, match=r"state of parameter 1: 'momentum_buffer' has shape \(7,\), "
                                         r"the parameter \(5,\)"):
        two.load_state_dict(bad)
    assert np.array_equal(two.state_dict()["state"][1]["momentum_buffer"], before["state"][1]["momentum_buffer"])
    with pytest.raises(ValueError, match=r"Adam.load_state_dict: parameter group 0 of the state_dict "
                                         r"has no betas, eps"):
        optim.Adam([{"params": t.ours[:1]}, {"params": t.ours[1:]}]).load_state_dict(state)
    bad = two.state_dict()
    bad["state"][9] = {"momentum_buffer": np.zeros(5)}
    with pytest.raises(ValueError, match=r"state for parameter 9, which is in none of its parameter groups"):
        two.load_state_dict(bad)
    with pytest.raises(ValueError, match=r"SGD.load_state_dict: parameter group 1: lr must be >= 0"):
        bad = two.state_dict()
        bad["param_groups"][1]["lr"] = -1.0
        two.load_state_dict(bad)
    cosine_state = lr_scheduler.CosineAnnealingLR(optim.SGD(Twins().ours, lr=0.1), 5).state_dict()
    with pytest.raises(ValueError, match=r"StepLR.load_state_dict: missing keys \['gamma', 'step_size'\], "
                                         r"unexpected keys \['T_max', 'eta_min'\]"):
        lr_scheduler.StepLR(two, 3).load_state_dict(cosine_state)


# ----- dtypes ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs", [
    ("SGD", dict(lr=np.float64(0.1), momentum=np.float64(0.9), weight_decay=np.float64(0.01), nesterov=True)),
    ("Adam", dict(lr=np.float64(0.01), betas=(np.float64(0.9), np.float64(0.99)), eps=np.float64(1e-8),
                  weight_decay=np.float64(0.1), amsgrad=True)),
    ("AdamW", dict(lr=np.float64(0.01), weight_decay=np.float64(0.1))),
])
def test_float32_stays_float32(name, kwargs):
    """NumPy float64 hyperparameters, float64 gradients and a scheduler's Python floats
    must not turn float32 parameters or state into float64."""
    twins = Twins(np.float32)
    opt = getattr(optim, name)(twins.ours, **kwargs)
    sched = lr_scheduler.OneCycleLR(opt, max_lr=np.float64(0.05), total_steps=10)
    for step in range(3, 10):
        twins.set_grads(step)
        for p in twins.ours:
            p.grad = None if p.grad is None else p.grad.astype(np.float64)
        opt.step()
        sched.step()
    for p, buf in zip(twins.ours, twins.buffers):
        assert p.data is buf and p.data.dtype == np.float32
        assert all(v.dtype == np.float32 for v in opt.state[p].values() if isinstance(v, np.ndarray))


# ----- errors ----------------------------------------------------------------------------
def _p():
    return [nn.Parameter(np.zeros(2))]


def _same_parameter_twice():
    p = _p()
    return optim.SGD([{"params": p}, {"params": p}])


def _milestones_do_not_fit():
    opt = optim.SGD(_p())
    return lr_scheduler.SequentialLR(opt, [lr_scheduler.StepLR(opt, 2)], milestones=[3])


BAD = [
    (lambda: optim.SGD(_p(), lr=-0.1), ValueError, "SGD: lr must be >= 0.0, got -0.1"),
    (lambda: optim.SGD(_p(), lr=float("nan")), ValueError, "SGD: lr must be >= 0.0, got nan"),
    (lambda: optim.SGD(_p(), lr="0.1"), TypeError, "SGD: lr must be a number, got '0.1'"),
    (lambda: optim.SGD(_p(), momentum=-0.5), ValueError, "SGD: momentum must be >= 0.0, got -0.5"),
    (lambda: optim.SGD(_p(), weight_decay=-1), ValueError, "SGD: weight_decay must be >= 0.0, got -1"),
    (lambda: optim.SGD(_p(), nesterov=True), ValueError,
     "SGD: nesterov=True requires momentum > 0 and dampening = 0, got momentum=0, dampening=0"),
    (lambda: optim.SGD(_p(), momentum=0.9, dampening=0.1, nesterov=True), ValueError, "dampening=0.1"),
    (lambda: optim.SGD([{"params": _p(), "lr": -1}], lr=0.1), ValueError,
     "SGD: parameter group 0: lr must be >= 0.0, got -1"),
    (lambda: optim.Adam(_p(), lr=-1e-3), ValueError, "Adam: lr must be >= 0.0, got -0.001"),
    (lambda: optim.Adam(_p(), betas=(1.0, 0.999)), ValueError, "Adam: betas[0] must be in [0, 1), got 1.0"),
    (lambda: optim.Adam(_p(), betas=(0.9, -0.1)), ValueError, "Adam: betas[1] must be in [0, 1), got -0.1"),
    (lambda: optim.Adam(_p(), betas=0.9), TypeError, "Adam: betas must be a pair of numbers (beta1, beta2), got 0.9"),
    (lambda: optim.Adam(_p(), eps=-1e-8), ValueError, "Adam: eps must be >= 0.0, got -1e-08"),
    (lambda: optim.Adam(_p(), weight_decay=-0.1), ValueError, "Adam: weight_decay must be >= 0.0, got -0.1"),
    (lambda: optim.AdamW(_p(), weight_decay=-0.01), ValueError, "AdamW: weight_decay must be >= 0.0, got -0.01"),
    (lambda: optim.AdamW([{"params": _p(), "betas": (0.9, 1.5)}]), ValueError, "AdamW: parameter group 0: betas[1]"),
    (lambda: optim.SGD([], lr=0.1), ValueError, "SGD: got an empty parameter list"),
    (lambda: optim.SGD(_p()[0], lr=0.1), TypeError, "SGD: params must be a list"),
    (lambda: optim.SGD([np.zeros(2)], lr=0.1), TypeError, "SGD: parameter group 0: params[0] must be a cnnlab Tensor"),
    (lambda: optim.SGD([cnnlab.Tensor(np.arange(3))]), TypeError, "params[0] must be floating point, got dtype int64"),
    (lambda: optim.SGD([nn.Parameter(np.ones(2)) * 2]), ValueError, "params[0] is not a leaf tensor"),
    (_same_parameter_twice, ValueError,
     "parameter group 1: some parameters are already in another parameter group"),
    (lambda: optim.SGD({"params": _p()}), TypeError, "got dict"),
    (lambda: lr_scheduler.StepLR(object(), 3), TypeError,
     "StepLR: optimizer must be a cnnlab.optim.Optimizer, got object"),
    (lambda: lr_scheduler.StepLR(optim.SGD(_p()), 0), ValueError, "StepLR: step_size must be a positive int, got 0"),
    (lambda: lr_scheduler.CosineAnnealingLR(optim.SGD(_p()), 0), ValueError,
     "CosineAnnealingLR: T_max must be a positive int, got 0"),
    (lambda: lr_scheduler.LinearLR(optim.SGD(_p()), start_factor=0), ValueError,
     "LinearLR: start_factor must be in (0, 1], got 0"),
    (lambda: lr_scheduler.LinearLR(optim.SGD(_p()), end_factor=1.5), ValueError,
     "LinearLR: end_factor must be in [0, 1], got 1.5"),
    (lambda: lr_scheduler.LambdaLR(optim.SGD(_p()), [abs, abs]), ValueError,
     "LambdaLR: expected 1 lr_lambdas (one per parameter group), got 2"),
    (lambda: lr_scheduler.OneCycleLR(optim.SGD(_p()), 0.1), ValueError,
     "OneCycleLR: give either total_steps, or both epochs and steps_per_epoch"),
    (lambda: lr_scheduler.OneCycleLR(optim.SGD(_p()), 0.1, total_steps=-5), ValueError,
     "OneCycleLR: total_steps must be a positive int, got -5"),
    (lambda: lr_scheduler.OneCycleLR(optim.SGD(_p()), 0.1, 10, pct_start=1.5), ValueError,
     "OneCycleLR: pct_start must be a number in [0, 1], got 1.5"),
    (lambda: lr_scheduler.OneCycleLR(optim.SGD(_p()), 0.1, 10, anneal_strategy="exp"), ValueError,
     "OneCycleLR: anneal_strategy must be 'cos' or 'linear', got 'exp'"),
    (lambda: lr_scheduler.OneCycleLR(optim.SGD(_p()), [0.1, 0.2], 10), ValueError,
     "OneCycleLR: max_lr has 2 values but the optimizer has 1 parameter groups"),
    (_milestones_do_not_fit, ValueError,
     "SequentialLR: expected 0 milestones for 1 schedulers, got 1"),
    (lambda: lr_scheduler.SequentialLR(optim.SGD(_p()), [lr_scheduler.StepLR(optim.SGD(_p()), 2)], []), ValueError,
     "SequentialLR: schedulers[0] (StepLR) belongs to another optimizer"),
]


@pytest.mark.parametrize("make,error,message", BAD, ids=[m[:40] for _, _, m in BAD])
def test_bad_arguments_raise_clear_errors(make, error, message):
    with pytest.raises(error) as info:
        make()
    assert message in str(info.value)


def test_onecycle_past_the_end_raises():
    sched = lr_scheduler.OneCycleLR(optim.SGD(_p()), 0.1, total_steps=3)
    for _ in range(3):
        sched.step()
    with pytest.raises(ValueError, match="OneCycleLR: tried to step 4 times, but total_steps is 3"):
        sched.step()
