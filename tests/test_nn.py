"""Layers against torch.nn: same weights in (through state_dict, whose keys match),
same outputs and gradients out; plus init, state_dict, modes, summary and conv_matrix."""
import math

import numpy as np
import pytest
import torch

import cnnlab
from cnnlab import functional as F, nn

torch.set_default_dtype(torch.float64)


def rel(a, b, floor=1e-30):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), floor)


def copy_from_torch(ours: nn.Module, theirs: torch.nn.Module):
    ours.load_state_dict({k: v.detach().numpy().copy() for k, v in theirs.state_dict().items()})


def compare_module(ours, theirs, x, dtype=np.float64, tol=1e-10, train=True, seed=0):
    """Run both modules on x with the same random upstream gradient; compare the output,
    the input gradient, and every parameter's gradient, by name."""
    ours.to(dtype)
    theirs.to(torch.float64 if dtype == np.float64 else torch.float32)
    copy_from_torch(ours, theirs)
    ours.train(train)
    theirs.train(train)
    ours.zero_grad()
    theirs.zero_grad(set_to_none=True)
    xt = torch.tensor(x.astype(dtype), requires_grad=True)
    xc = cnnlab.Tensor(x.astype(dtype), requires_grad=True)
    ot, oc = theirs(xt), ours(xc)
    assert oc.shape == tuple(ot.shape)
    assert oc.dtype == dtype
    g = np.random.default_rng(seed).standard_normal(oc.shape).astype(dtype)
    ot.backward(torch.tensor(g))
    oc.backward(g)
    assert rel(oc.data, ot.detach().numpy()) < tol
    assert rel(xc.grad, xt.grad.numpy()) < tol
    theirs_params = dict(theirs.named_parameters())
    ours_params = dict(ours.named_parameters())
    assert ours_params.keys() == theirs_params.keys()
    for name, p in ours_params.items():
        # floor: a conv bias followed by batch norm has a gradient that is zero up to rounding
        assert rel(p.grad, theirs_params[name].grad.numpy(), floor=1e-3) < tol, name
    for name, b in theirs.named_buffers():
        assert rel(dict(ours.named_buffers())[name].data, b.numpy()) < tol, name
    return oc


def lenet_pair():
    ours = cnnlab.models.lenet5()
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(400, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(),
        torch.nn.Linear(84, 10))
    return ours, theirs


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_lenet5_matches_torch(dtype, tol):
    ours, theirs = lenet_pair()
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28))
    compare_module(ours, theirs, x, dtype, tol)


@pytest.mark.parametrize("kwargs", [
    dict(in_channels=3, out_channels=4, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=2),
    dict(in_channels=3, out_channels=5, kernel_size=3, padding="same", padding_mode="circular", bias=False),
    dict(in_channels=3, out_channels=5, kernel_size=3, padding=1, padding_mode="reflect"),
    dict(in_channels=3, out_channels=5, kernel_size=5, padding=2, padding_mode="replicate"),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4),
])
def test_conv2d_layer_matches_torch(kwargs):
    x = np.random.default_rng(2).standard_normal((2, kwargs["in_channels"], 9, 8))
    compare_module(nn.Conv2d(**kwargs), torch.nn.Conv2d(**kwargs), x)


def test_block_layers_match_torch():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 10, 10))
    pairs = [
        (nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.PReLU(8), nn.AvgPool2d(2, ceil_mode=True),
                       nn.Dropout(0.0), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(72, 5), nn.Tanh()),
         torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.PReLU(8),
                             torch.nn.AvgPool2d(2, ceil_mode=True), torch.nn.Dropout(0.0), torch.nn.AdaptiveAvgPool2d(3),
                             torch.nn.Flatten(), torch.nn.Linear(72, 5), torch.nn.Tanh())),
        (nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(3, 2, 1), nn.ELU(0.5),
                       nn.GELU(), nn.AdaptiveMaxPool2d((2, 3)), nn.Flatten(), nn.BatchNorm1d(36), nn.Sigmoid(),
                       nn.Linear(36, 4), nn.LogSoftmax(1)),
         torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.LeakyReLU(0.1), torch.nn.MaxPool2d(3, 2, 1),
                             torch.nn.ELU(0.5), torch.nn.GELU(), torch.nn.AdaptiveMaxPool2d((2, 3)), torch.nn.Flatten(),
                             torch.nn.BatchNorm1d(36), torch.nn.Sigmoid(), torch.nn.Linear(36, 4), torch.nn.LogSoftmax(1))),
    ]
    for ours, theirs in pairs:
        compare_module(ours, theirs, x, train=True)
        compare_module(ours, theirs, x, train=False)


class TorchBasicBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.shortcut = (torch.nn.Identity() if stride == 1 and cin == cout else torch.nn.Sequential(
            torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout)))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@pytest.mark.parametrize("cin,cout,stride", [(4, 4, 1), (4, 8, 2)])
def test_basic_block_matches_torch(cin, cout, stride):
    x = np.random.default_rng(4).standard_normal((3, cin, 8, 8))
    ours, theirs = nn.BasicBlock(cin, cout, stride), TorchBasicBlock(cin, cout, stride)
    for train in (True, False):
        compare_module(ours, theirs, x, train=train)


def test_option_a_shortcut_pads_channels_and_subsamples():
    x = cnnlab.Tensor(np.random.default_rng(5).standard_normal((2, 3, 6, 6)), requires_grad=True)
    out = nn.PadChannelsShortcut(3, 5, 2)(x)
    assert out.shape == (2, 5, 3, 3)
    np.testing.assert_array_equal(out.data[:, :3], x.data[:, :, ::2, ::2])
    np.testing.assert_array_equal(out.data[:, 3:], 0)
    out.backward(np.ones(out.shape))
    assert x.grad.sum() == 2 * 3 * 9
    block = nn.BasicBlock(3, 5, 2, shortcut="identity").double()
    assert block(x).shape == (2, 5, 3, 3)
    assert not any("shortcut" in n for n, _ in block.named_parameters())


@pytest.mark.parametrize("layout", ["nchw", "channels-last"])
@pytest.mark.parametrize("shape,cout,stride", [((2, 3, 7, 6), 5, 2), ((1, 4, 5, 5), 4, 1), ((2, 2, 9, 4), 6, 3)])
def test_option_a_shortcut_is_index_and_concatenation_with_its_gradient(shape, cout, stride, layout):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape)
    if layout == "channels-last":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    ours = cnnlab.Tensor(x, requires_grad=True)
    out = nn.PadChannelsShortcut(shape[1], cout, stride)(ours)
    theirs = torch.tensor(x, requires_grad=True)
    sub = theirs[:, :, ::stride, ::stride]
    want = torch.cat([sub, torch.zeros(sub.shape[0], cout - shape[1], *sub.shape[2:])], dim=1)
    np.testing.assert_array_equal(out.data, want.detach().numpy())
    g = rng.standard_normal(out.shape)
    out.backward(g)
    want.backward(torch.tensor(g))
    np.testing.assert_array_equal(ours.grad, theirs.grad.numpy())
    assert np.argsort(out.data.strides)[::-1].tolist() == np.argsort(x.strides)[::-1].tolist()   # x's layout
    with pytest.raises(ValueError, match=r"PadChannelsShortcut.*expected input of shape \(N, 3, H, W\)"):
        nn.PadChannelsShortcut(3, 5, 2)(np.zeros((1, 4, 6, 6)))


def test_residual_generic_adds_body_and_shortcut():
    body = nn.Conv2d(2, 2, 3, padding=1).double()
    res = nn.Residual(body)
    x = cnnlab.Tensor(np.random.default_rng(6).standard_normal((1, 2, 5, 5)))
    np.testing.assert_allclose(res(x).data, body(x).data + x.data, rtol=1e-6)


def test_bottleneck_shapes_and_params():
    b = nn.Bottleneck(64, 64, stride=2)
    out = b(cnnlab.zeros(1, 64, 8, 8))
    assert out.shape == (1, 256, 4, 4)
    # 1x1 64->64, 3x3 64->64, 1x1 64->256, projection 64->256, and 4 BNs (2 params per channel)
    expected = 64 * 64 + 9 * 64 * 64 + 64 * 256 + 64 * 256 + 2 * (64 + 64 + 256 + 256)
    assert b.num_parameters() == expected


# ----- initialisation -----
def test_default_init_ranges_match_pytorch_formulas():
    cnnlab.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3)
    bound = 1 / math.sqrt(16 * 9)
    assert np.abs(conv.weight.data).max() <= bound and np.abs(conv.weight.data).max() > 0.9 * bound
    assert np.abs(conv.bias.data).max() <= bound
    # U(-b, b) has standard deviation b / sqrt(3)
    assert abs(conv.weight.data.std() - bound / math.sqrt(3)) < 0.05 * bound
    lin = nn.Linear(200, 50)
    assert np.abs(lin.weight.data).max() <= 1 / math.sqrt(200)
    w = cnnlab.Tensor(np.empty((256, 128), np.float32))
    nn.init.kaiming_normal_(w, nonlinearity="relu")
    assert abs(w.data.std() - math.sqrt(2 / 128)) < 0.02 * math.sqrt(2 / 128)
    nn.init.xavier_uniform_(w)
    assert np.abs(w.data).max() <= math.sqrt(6 / (128 + 256))
    assert nn.init.calculate_gain("leaky_relu", 0.2) == pytest.approx(torch.nn.init.calculate_gain("leaky_relu", 0.2))
    assert nn.PReLU().weight.data[0] == pytest.approx(0.25)
    bn = nn.BatchNorm2d(3)
    assert (bn.weight.data == 1).all() and (bn.bias.data == 0).all()
    assert (bn.running_mean.data == 0).all() and (bn.running_var.data == 1).all()


def test_manual_seed_makes_init_repeatable():
    cnnlab.manual_seed(42)
    a = nn.Conv2d(3, 4, 3).weight.data.copy()
    cnnlab.manual_seed(42)
    b = nn.Conv2d(3, 4, 3).weight.data.copy()
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32


# ----- Module behaviour -----
def test_parameters_found_without_registration():
    class Net(nn.Module):
        def __init__(self):
            self.features = [nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 3, 3)]
            self.head = nn.Linear(3, 2)
            self.scale = nn.Parameter(np.ones(1, np.float32))

        def forward(self, x):
            for m in self.features:
                x = m(x)
            return self.head(x.mean((2, 3))) * self.scale

    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["scale", "features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias",
                     "head.weight", "head.bias"] or set(names) == {
        "scale", "features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias", "head.weight",
        "head.bias"}
    out = net(cnnlab.Tensor(np.ones((1, 1, 6, 6), np.float32)))
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_shared_parameter_listed_once():
    conv = nn.Conv2d(2, 2, 3, padding=1).double()
    net = nn.Sequential(conv, nn.ReLU(), conv)
    assert len(list(net.parameters())) == 2
    assert list(net.state_dict()) == ["0.weight", "0.bias"]
    # a layer used twice in the graph: its gradient sums both uses
    x = cnnlab.Tensor(np.random.default_rng(7).standard_normal((1, 2, 5, 5)))
    net(x).sum().backward()
    tconv = torch.nn.Conv2d(2, 2, 3, padding=1)
    tconv.load_state_dict({k: torch.tensor(v.astype(np.float64)) for k, v in conv.state_dict().items()})
    tconv.double()
    torch.nn.Sequential(tconv, torch.nn.ReLU(), tconv)(torch.tensor(x.data, dtype=torch.float64)).sum().backward()
    assert rel(conv.weight.grad, tconv.weight.grad.numpy()) < 1e-4


def test_state_dict_round_trip_and_keys_match_torch():
    ours, theirs = lenet_pair()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    bn_ours = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    bn_theirs = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    assert list(bn_ours.state_dict()) == list(bn_theirs.state_dict())
    bn_ours(cnnlab.Tensor(np.random.default_rng(8).standard_normal((4, 1, 5, 5)).astype(np.float32)))
    state = bn_ours.state_dict()
    fresh = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    fresh.load_state_dict(state)
    for (k, a), (_, b) in zip(state.items(), fresh.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    assert int(fresh[1].num_batches_tracked.data) == 1
    # the state_dict holds copies: changing the model does not change it
    fresh[0].weight.data += 1
    assert not np.array_equal(fresh.state_dict()["0.weight"], state["0.weight"])


def test_load_state_dict_errors_name_key_and_shapes():
    net = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.Linear(10, 2))
    state = net.state_dict()
    bad = dict(state)
    bad["0.weight"] = np.zeros((6, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"'0\.weight' has shape \(6, 1, 5, 5\) in the model but \(6, 3, 5, 5\)"):
        net.load_state_dict(bad)
    missing = {k: v for k, v in state.items() if k != "2.bias"}
    with pytest.raises(ValueError, match=r"missing keys: 2\.bias"):
        net.load_state_dict(missing)
    extra = dict(state, **{"3.weight": np.zeros(2)})
    with pytest.raises(ValueError, match=r"unexpected keys: 3\.weight"):
        net.load_state_dict(extra)
    before = net.state_dict()
    with pytest.raises(ValueError):
        net.load_state_dict(bad)
    for k in before:  # nothing was half-loaded
        np.testing.assert_array_equal(before[k], net.state_dict()[k])
    net.load_state_dict(missing, strict=False)


def test_batchnorm_train_eval_and_running_stats_match_torch():
    rng = np.random.default_rng(9)
    ours, theirs = nn.BatchNorm2d(3, momentum=0.3), torch.nn.BatchNorm2d(3, momentum=0.3)
    ours.double()
    for _ in range(3):
        x = rng.standard_normal((5, 3, 4, 4)) * 2 + 1
        ours(cnnlab.Tensor(x))
        theirs(torch.tensor(x))
    np.testing.assert_allclose(ours.running_mean.data, theirs.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.running_var.data, theirs.running_var.numpy(), rtol=1e-12)
    assert int(ours.num_batches_tracked.data) == 3
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((2, 3, 4, 4))
    np.testing.assert_allclose(ours(cnnlab.Tensor(x)).data, theirs(torch.tensor(x)).detach().numpy(), rtol=1e-10)
    # eval does not touch the running statistics
    before = ours.running_mean.data.copy()
    ours(cnnlab.Tensor(x))
    np.testing.assert_array_equal(before, ours.running_mean.data)
    # momentum=None: cumulative average
    ca, ct = nn.BatchNorm1d(2, momentum=None).double(), torch.nn.BatchNorm1d(2, momentum=None)
    for _ in range(4):
        x = rng.standard_normal((6, 2))
        ca(cnnlab.Tensor(x))
        ct(torch.tensor(x))
    np.testing.assert_allclose(ca.running_var.data, ct.running_var.numpy(), rtol=1e-12)
    # no running statistics: batch statistics in eval too
    nt = nn.BatchNorm2d(3, track_running_stats=False).double().eval()
    y = nt(cnnlab.Tensor(rng.standard_normal((4, 3, 2, 2)) + 5)).data
    assert abs(y.mean()) < 1e-10


def test_dropout_train_and_eval():
    cnnlab.manual_seed(0)
    d = nn.Dropout(0.25)
    x = cnnlab.Tensor(np.ones((200, 200), np.float32))
    y = d(x).data
    assert abs((y == 0).mean() - 0.25) < 0.01
    np.testing.assert_allclose(y[y != 0], 1 / 0.75, rtol=1e-6)
    d.eval()
    assert d(x) is x or np.array_equal(d(x).data, x.data)
    net = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))
    net.eval()
    assert all(not m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_repr_reads_like_torch():
    ours, theirs = lenet_pair()
    assert repr(ours).splitlines()[1] == repr(theirs).splitlines()[1]  # the first Conv2d line
    assert "(0): Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))" in repr(ours)
    assert "Linear(in_features=84, out_features=10, bias=True)" in repr(ours)


# ----- layer errors name the layer -----
def test_layer_errors_name_layer_argument_and_values():
    with pytest.raises(ValueError, match=r"Conv2d: stride must be positive, got 0"):
        nn.Conv2d(3, 4, 3, stride=0)
    with pytest.raises(ValueError, match=r"Conv2d: dilation must be positive, got \(1, 0\)"):
        nn.Conv2d(3, 4, 3, dilation=(1, 0))
    with pytest.raises(ValueError, match=r"Conv2d: padding must be non-negative, got -1"):
        nn.Conv2d(3, 4, 3, padding=-1)
    with pytest.raises(ValueError, match=r"Conv2d: padding_mode must be one of .*'circular'.*got 'wrap'"):
        nn.Conv2d(3, 4, 3, padding_mode="wrap")
    with pytest.raises(ValueError, match=r"Conv2d: in_channels \(3\) and out_channels \(4\) must both be divisible by groups \(2\)"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match=r"Conv2d: untied_bias=True needs input_size"):
        nn.Conv2d(3, 4, 3, untied_bias=True)
    with pytest.raises(ValueError, match=r"MaxPool2d: padding should be at most half of kernel_size"):
        nn.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match=r"Dropout: p must be a probability in \[0, 1\], got 1.5"):
        nn.Dropout(1.5)
    conv = nn.Conv2d(3, 16, 3)
    with pytest.raises(ValueError, match=r"^Conv2d\(3, 16, kernel_size=\(3, 3\), stride=\(1, 1\)\): .*expected input "
                                         r"with 3 channels.*got 1 channels in input of shape \(8, 1, 28, 28\)"):
        conv(cnnlab.zeros(8, 1, 28, 28))
    with pytest.raises(ValueError, match=r"Conv2d\(3, 16.*expected a 3-D or 4-D input.*got shape \(28, 28\)"):
        conv(cnnlab.zeros(28, 28))
    with pytest.raises(ValueError, match=r"kernel height 3 is larger than the padded input height 2"):
        nn.Sequential(nn.ReLU(), conv)(cnnlab.zeros(1, 3, 2, 8))
    with pytest.raises(ValueError, match=r"BatchNorm2d\(4.*expected a 4-D input, got shape \(2, 4\)"):
        nn.BatchNorm2d(4)(cnnlab.zeros(2, 4))
    with pytest.raises(ValueError, match=r"BatchNorm2d\(4.*running_mean must have shape \(3,\)|running_mean must have shape \(4,\) for input with 3"):
        nn.BatchNorm2d(4)(cnnlab.zeros(2, 3, 2, 2))
    with pytest.raises(ValueError, match=r"Linear\(in_features=10.*expected input with last dimension 10.*got shape \(2, 12\)"):
        nn.Linear(10, 2)(cnnlab.zeros(2, 12))
    with pytest.raises(ValueError, match=r"LocallyConnected2d.*output positions.*\(10, 10\)"):
        nn.LocallyConnected2d(1, 2, 3, input_size=(8, 8))(cnnlab.zeros(1, 1, 10, 10))


# ----- untied bias, locally connected -----
def test_untied_bias_conv_layer():
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2, untied_bias=True, input_size=(7, 7)).double()
    assert conv.bias.shape == (3, 4, 4)
    assert conv.num_parameters() == 3 * 2 * 9 + 3 * 16
    x = np.random.default_rng(10).standard_normal((2, 2, 7, 7))
    out = conv(cnnlab.Tensor(x))
    ref = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(conv.weight.data), None, 2, 1)
    np.testing.assert_allclose(out.data, ref.numpy() + conv.bias.data, rtol=1e-12)


def test_locally_connected_equals_conv_when_weights_shared():
    rng = np.random.default_rng(11)
    for kwargs in (dict(stride=1, padding=1), dict(stride=2, padding="same", padding_mode="circular"),
                   dict(stride=(2, 1), padding=(0, 2), dilation=(1, 2), padding_mode="reflect")):
        conv = nn.Conv2d(3, 4, 3, **kwargs).double()
        lc = nn.LocallyConnected2d(3, 4, 3, input_size=(9, 10), **kwargs).double()
        lc.weight.data[...] = conv.weight.data
        lc.bias.data[...] = conv.bias.data[:, None, None]
        x = rng.standard_normal((2, 3, 9, 10))
        xc, xl = cnnlab.Tensor(x, requires_grad=True), cnnlab.Tensor(x, requires_grad=True)
        oc, ol = conv(xc), lc(xl)
        np.testing.assert_allclose(ol.data, oc.data, rtol=1e-12, atol=1e-12)
        g = rng.standard_normal(oc.shape)
        oc.backward(g)
        ol.backward(g)
        np.testing.assert_allclose(xl.grad, xc.grad, rtol=1e-12, atol=1e-12)
        # weight sharing sums the per-position gradients into the one filter
        np.testing.assert_allclose(lc.weight.grad.sum(axis=(0, 1)), conv.weight.grad, rtol=1e-10)


# ----- summary -----
def test_summary_reproduces_the_lecture_numbers(capsys):
    s = cnnlab.summary(nn.Conv2d(3, 96, 11, stride=4), (3, 227, 227))
    assert s.layers[0].output_shape == (96, 55, 55)
    assert s.total_params == 34_944
    assert "34,944" in capsys.readouterr().out
    s = cnnlab.summary(nn.LocallyConnected2d(3, 96, 11, input_size=(227, 227), stride=4), (3, 227, 227), verbose=False)
    assert s.layers[0].output_shape == (96, 55, 55)
    assert s.total_params == 105_705_600
    s = cnnlab.summary(nn.Conv2d(3, 6, 5), (3, 32, 32), verbose=False)
    assert s.layers[0].output_shape == (6, 28, 28)
    s = cnnlab.summary(nn.Conv2d(1, 1, 9), (1, 83, 83), verbose=False)
    assert s.layers[0].output_shape == (1, 75, 75)


def test_summary_receptive_fields_mult_adds_and_memory():
    s = cnnlab.summary(cnnlab.models.lenet5(), (1, 28, 28), batch_size=2, verbose=False)
    by = {l.name: l for l in s.layers}
    assert by["0"].receptive_field == (5, 5) and by["0"].jump == (1, 1)
    assert by["2"].receptive_field == (6, 6) and by["2"].jump == (2, 2)
    assert by["3"].receptive_field == (14, 14) and by["3"].jump == (2, 2)
    assert by["5"].receptive_field == (16, 16) and by["5"].jump == (4, 4)
    assert by["7"].receptive_field == "all"
    assert by["0"].mult_adds == 6 * 28 * 28 * 25
    assert by["7"].mult_adds == 400 * 120
    assert by["0"].activation_bytes == 2 * 6 * 28 * 28 * 4
    assert s.total_params == 61_706
    # dilation widens the field without adding parameters
    s = cnnlab.summary(nn.Sequential(nn.Conv2d(1, 1, 3, dilation=2), nn.Conv2d(1, 1, 3, stride=2), nn.Conv2d(1, 1, 3)),
                       (1, 32, 32), verbose=False)
    assert [l.receptive_field for l in s.layers] == [(5, 5), (7, 7), (11, 11)]
    # a residual block: the output sees as far as its deepest branch
    s = cnnlab.summary(nn.BasicBlock(2, 2), (2, 8, 8), verbose=False)
    assert s.layers[-1].receptive_field == (5, 5)


# ----- convolution as a matrix -----
@pytest.mark.parametrize("kwargs", [
    dict(), dict(stride=2, padding=1), dict(padding="same", padding_mode="circular"),
    dict(padding=2, padding_mode="reflect", dilation=2), dict(padding=(1, 2), padding_mode="symmetric"),
    dict(padding=1, padding_mode="replicate", groups=2),
])
def test_conv_matrix_matches_conv_and_its_transpose_is_the_input_gradient(kwargs):
    rng = np.random.default_rng(12)
    groups = kwargs.get("groups", 1)
    w = rng.standard_normal((4, 4 // groups, 3, 3))
    x = rng.standard_normal((1, 4, 7, 6))
    xt = cnnlab.Tensor(x, requires_grad=True)
    mode = kwargs.pop("padding_mode", "zeros")
    out = F.conv2d(xt, cnnlab.Tensor(w), padding_mode=mode, **kwargs)
    m = cnnlab.conv_matrix(w, (4, 7, 6), padding_mode=mode, **kwargs)
    assert m.shape == (out.data.size, x.size)
    np.testing.assert_allclose(m @ x.ravel(), out.data.ravel(), rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    np.testing.assert_allclose(m.T @ g.ravel(), xt.grad.ravel(), rtol=1e-12, atol=1e-12)


def test_conv_matrix_lecture_example_and_circulant():
    w = np.arange(1, 10, dtype=np.float64).reshape(1, 1, 3, 3)
    m = cnnlab.conv_matrix(w, (1, 4, 4))
    assert m.shape == (4, 16)
    assert list(m.getnnz(axis=1)) == [9, 9, 9, 9]
    dense = cnnlab.conv_matrix(w, (1, 5, 5), padding="same", padding_mode="circular").toarray()
    assert dense.shape == (25, 25)
    # block-circulant: moving the output one row down moves every input row down one (mod 5)
    for r in range(25):
        i, j = divmod(r, 5)
        shifted = np.roll(dense[j].reshape(5, 5), (i, 0), axis=(0, 1)).ravel()
        np.testing.assert_array_equal(dense[r], shifted)


def test_modules_and_parameters_in_dicts_and_lists_are_found():
    class Heads(nn.Module):
        def __init__(self):
            self.heads = {"a": nn.Linear(3, 2), "b": nn.Linear(3, 1)}
            self.scales = [nn.Parameter(np.ones(2, np.float32))]

    names = [n for n, _ in Heads().named_parameters()]
    assert set(names) == {"scales.0", "heads.a.weight", "heads.a.bias", "heads.b.weight", "heads.b.bias"}


def test_load_state_dict_accepts_tensors_and_torch_tensors():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    b.load_state_dict(dict(a.named_parameters()))
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    t = torch.nn.Linear(3, 2)
    b.load_state_dict(t.state_dict())
    np.testing.assert_allclose(b.weight.data, t.weight.detach().numpy(), rtol=1e-6)


def test_failed_batchnorm_call_is_not_counted():
    bn = nn.BatchNorm2d(3)
    with pytest.raises(ValueError):
        bn(cnnlab.zeros(1, 3, 1, 1))  # one value per channel: refused in training
    assert int(bn.num_batches_tracked.data) == 0


def test_summary_keeps_each_layers_mode_and_follows_option_a_strides():
    model = cnnlab.models.resnet20()
    model.stages[0][0].bn1.eval()
    s = cnnlab.summary(model, (3, 32, 32), verbose=False)
    assert model.training and not model.stages[0][0].bn1.training
    by = {l.name: l for l in s.layers}
    assert by["stages.1.0.shortcut"].jump == (2, 2)
    assert by["stages.2.0.shortcut"].jump == (4, 4)


def test_conv_matrix_refuses_what_conv2d_refuses():
    w = np.ones((1, 1, 3, 3))
    with pytest.raises(ValueError, match=r"conv_matrix: padding_mode='reflect' needs padding < the input's height \(5\)"):
        cnnlab.conv_matrix(w, (1, 5, 5), padding=5, padding_mode="reflect")
    with pytest.raises(ValueError, match=r"conv_matrix: groups must be a positive int, got 1.5"):
        cnnlab.conv_matrix(w, (1, 5, 5), groups=1.5)
    with pytest.raises(ValueError, match=r"conv_matrix: expected input with 1 channels"):
        cnnlab.conv_matrix(w, (2, 5, 5))


# ----- Sequential runs a Conv2d, BatchNorm or Linear followed by a ReLU as one fused call -----
def _relu_calls(monkeypatch):
    """A list that grows by one for every ReLU op computed on its own."""
    from cnnlab import ops
    calls, forward = [], ops.ReLU.forward
    monkeypatch.setattr(ops.ReLU, "forward", staticmethod(lambda ctx, a: calls.append(1) or forward(ctx, a)))
    return calls


def _conv_relu_net(conv_cls=nn.Conv2d, relu_cls=nn.ReLU):
    cnnlab.manual_seed(3)
    return nn.Sequential(conv_cls(2, 5, 3, padding=1), relu_cls(), nn.MaxPool2d(2),
                         conv_cls(5, 4, 3), relu_cls(), nn.Flatten(), nn.Linear(4, 3), nn.ReLU())


def test_sequential_fuses_conv_relu_with_the_same_values_and_gradients(monkeypatch):
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6)).astype(np.float32)
    net = _conv_relu_net()
    calls = _relu_calls(monkeypatch)
    out = net(cnnlab.Tensor(x))
    assert len(calls) == 0            # every ReLU runs inside the layer before it
    out.sum().backward()
    fused = [p.grad.copy() for p in net.parameters()]
    # the same layers called one by one, unfused
    for p in net.parameters():
        p.grad = None
    h = cnnlab.Tensor(x)
    for layer in net:
        h = layer(h)
    assert len(calls) == 3
    np.testing.assert_array_equal(h.data, out.data)
    h.sum().backward()
    for a, p in zip(fused, net.parameters()):
        np.testing.assert_array_equal(a, p.grad)


@pytest.mark.parametrize("conv_cls,relu_cls", [
    (type("MyConv", (nn.Conv2d,), {"forward": lambda self, x: nn.Conv2d.forward(self, x) * 2}), nn.ReLU),
    (nn.Conv2d, type("MyReLU", (nn.ReLU,), {"forward": lambda self, x: F.relu(x) + 1})),
])
def test_sequential_does_not_fuse_subclasses(monkeypatch, conv_cls, relu_cls):
    """A subclass may change what forward does, so only the plain classes are fused."""
    x = cnnlab.Tensor(np.random.default_rng(1).standard_normal((2, 2, 6, 6)).astype(np.float32))
    net = _conv_relu_net(conv_cls, relu_cls)
    h = x
    for layer in net:
        h = layer(h)
    np.testing.assert_array_equal(net(x).data, h.data)


def test_sequential_does_not_fuse_while_calls_are_observed(monkeypatch):
    """Inspection tools observe every module call: the ReLU's and the output before it."""
    net = _conv_relu_net()
    calls = _relu_calls(monkeypatch)
    seen = []
    with nn.observe_calls(lambda m, args, out: seen.append(type(m).__name__)):
        net(cnnlab.Tensor(np.ones((1, 2, 6, 6), np.float32)))
    assert len(calls) == 3 and seen.count("ReLU") == 3 and seen.count("Conv2d") == 2


def test_sequential_does_not_fuse_layers_whose_forward_was_replaced_on_the_instance():
    x = cnnlab.Tensor(np.random.default_rng(2).standard_normal((2, 2, 6, 6)).astype(np.float32))
    net = _conv_relu_net()
    net[1].forward = lambda h: F.relu(h) + 1          # this ReLU adds 1
    net[3].forward = lambda h: nn.Conv2d.forward(net[3], h) * 2
    h = x
    for layer in net:
        h = layer(h)
    np.testing.assert_array_equal(net(x).data, h.data)


# ----- inference folds a batch norm into the convolution before it -----
def _evaluated(module, rng):
    """``module`` in evaluation mode, its batch norms given running statistics and affine
    parameters that are not the identity (a fold that dropped any of them would show)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.data[:] = rng.standard_normal(c)
            m.running_var.data[:] = rng.random(c) + 0.5
            if m.weight is not None:
                m.weight.data[:], m.bias.data[:] = rng.standard_normal(c), rng.standard_normal(c)
    return module.eval()


def _batch_norm_ops(monkeypatch):
    """A list that grows by one for every batch norm op computed on its own."""
    from cnnlab.functional import normalization
    calls, forward = [], normalization.BatchNormFunction.forward
    monkeypatch.setattr(normalization.BatchNormFunction, "forward",
                        staticmethod(lambda ctx, *a, **k: calls.append(1) or forward(ctx, *a, **k)))
    return calls


def _layer_by_layer(module, x):
    """The module's output with every layer called on its own (nothing fuses or folds
    while module calls are observed)."""
    with nn.observe_calls(lambda m, args, out: None):
        return module(x)


@pytest.mark.parametrize("bias,affine,untied", [(False, True, False), (True, True, False), (True, False, False),
                                                (True, True, True)])
def test_fuse_conv_bn_weights_matches_torch(bias, affine, untied):
    rng = np.random.default_rng(30)
    w = rng.standard_normal((6, 3, 3, 3))
    b = rng.standard_normal((6, 4, 5) if untied else 6) if bias else None
    rm, rv = rng.standard_normal(6), rng.random(6) + 0.1
    gamma, beta = (rng.standard_normal(6), rng.standard_normal(6)) if affine else (None, None)
    fw, fb = nn.fusion.fuse_conv_bn_weights(w, b, rm, rv, 1e-3, gamma, beta)
    t = (lambda a: None if a is None else torch.tensor(a))
    b_torch = t(b) if not untied else None    # torch's fusion knows one bias per filter only
    tw, tb = torch.nn.utils.fusion.fuse_conv_bn_weights(t(w), b_torch, t(rm), t(rv), 1e-3, t(gamma), t(beta))
    assert fw.dtype == fb.dtype == np.float64
    assert rel(fw, tw.detach().numpy()) < 1e-14
    if untied:   # each position's bias scaled and shifted like the tied one
        _, tb0 = torch.nn.utils.fusion.fuse_conv_bn_weights(t(w), torch.zeros(6, dtype=torch.float64), t(rm), t(rv),
                                                            1e-3, t(gamma), t(beta))
        scale = tw.detach().numpy()[:, 0, 0, 0] / w[:, 0, 0, 0]
        np.testing.assert_allclose(fb, b * scale[:, None, None] + tb0.detach().numpy()[:, None, None], rtol=1e-13)
    else:
        assert rel(fb, tb.detach().numpy()) < 1e-14


def test_fuse_conv_bn_weights_names_what_does_not_fit():
    with pytest.raises(ValueError, match=r"fuse_conv_bn_weights: batch norm running_var must have shape \(6,\)"):
        nn.fusion.fuse_conv_bn_weights(np.zeros((6, 3, 3, 3)), None, np.zeros(6), np.ones(5), 1e-5)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_inference_folds_batch_norm_and_matches_torch(dtype, tol, monkeypatch):
    """In evaluation with no gradient recorded, a Conv2d followed by a BatchNorm2d (and a
    ReLU, and a residual block's shortcut) runs as one convolution: no batch norm op runs,
    and the output is PyTorch's up to float rounding."""
    rng = np.random.default_rng(31)
    pairs = [
        (nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                       nn.Conv2d(8, 4, 3, stride=2, padding=1, padding_mode="circular", bias=False),
                       nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1, groups=2), nn.BatchNorm2d(4, affine=False)),
         torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                             torch.nn.Conv2d(8, 4, 3, stride=2, padding=1, padding_mode="circular", bias=False),
                             torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 4, 1, groups=2),
                             torch.nn.BatchNorm2d(4, affine=False))),
        (nn.BasicBlock(4, 4, 1), TorchBasicBlock(4, 4, 1)),
        (nn.BasicBlock(4, 8, 2), TorchBasicBlock(4, 8, 2)),     # projection shortcut: a Sequential conv + bn
    ]
    calls = _batch_norm_ops(monkeypatch)
    for ours, theirs in pairs:
        ours.to(dtype)
        _evaluated(theirs.to(torch.float64 if dtype == np.float64 else torch.float32), rng)
        copy_from_torch(ours, theirs)
        ours.eval()
        x = rng.standard_normal((2, ours.conv1.in_channels if hasattr(ours, "conv1") else 3, 9, 9)).astype(dtype)
        with torch.no_grad():
            want = theirs(torch.tensor(x)).numpy()
        calls.clear()
        with cnnlab.no_grad():
            got = ours(x)
        assert not calls                                   # every batch norm folded
        assert got.dtype == dtype and rel(got.data, want) < tol
        assert rel(got.data, _layer_by_layer(ours, x).data) < tol
        assert calls                                       # and layer by layer, they ran


@pytest.mark.parametrize("block", ["basic_identity", "basic_option_a", "bottleneck"])
def test_inference_folds_the_residual_blocks(block, monkeypatch):
    rng = np.random.default_rng(32)
    cnnlab.manual_seed(4)
    module = {"basic_identity": lambda: nn.BasicBlock(6, 6),
              "basic_option_a": lambda: nn.BasicBlock(6, 8, 2, shortcut="identity"),
              "bottleneck": lambda: nn.Bottleneck(8, 2, stride=2)}[block]()
    module = _evaluated(module, rng)
    x = rng.standard_normal((3, module.conv1.in_channels, 8, 8)).astype(np.float32)
    calls = _batch_norm_ops(monkeypatch)
    with cnnlab.no_grad():
        got = module(x)
    assert not calls
    want = _layer_by_layer(module, x)
    assert rel(got.data, want.data) < 1e-5 and 0.2 < np.mean(got.data == 0) < 0.8


def _conv_bn_relu():
    cnnlab.manual_seed(5)
    return _evaluated(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()),
                      np.random.default_rng(33))


@pytest.mark.parametrize("why", ["grad", "training", "observed", "no running stats", "subclass", "forward replaced",
                                 "channels differ"])
def test_inference_does_not_fold_where_it_would_change_what_runs(why, monkeypatch):
    net = _conv_bn_relu()
    x = cnnlab.Tensor(np.random.default_rng(34).standard_normal((2, 2, 5, 5)).astype(np.float32))
    if why == "training":
        net.train()
    elif why == "no running stats":
        net.layers[1] = nn.BatchNorm2d(3, track_running_stats=False).eval()
    elif why == "subclass":
        net.layers[1] = _evaluated(type("MyBN", (nn.BatchNorm2d,), {})(3), np.random.default_rng(1))
    elif why == "forward replaced":
        net[1].forward = lambda h: nn.BatchNorm2d.forward(net[1], h) * 2
    elif why == "channels differ":    # the batch norm's own error, not the fold's
        net.layers[1] = nn.BatchNorm2d(4).eval()
    calls = _batch_norm_ops(monkeypatch)
    if why == "channels differ":
        with cnnlab.no_grad(), pytest.raises(ValueError, match=r"BatchNorm2d\(4.*running_mean must have shape \(3,\)"):
            net(x)
        return
    with (nn.observe_calls(lambda *a: None) if why == "observed" else cnnlab.no_grad() if why != "grad"
          else cnnlab.enable_grad()):
        out = net(x)
        assert calls
        if why == "forward replaced":
            np.testing.assert_array_equal(out.data, F.relu(net[1](net[0](x))).data)


def test_inference_folds_the_current_statistics():
    """Nothing is kept between calls: new running statistics or weights show at once."""
    net = _conv_bn_relu()
    x = np.random.default_rng(35).standard_normal((2, 2, 5, 5)).astype(np.float32)
    with cnnlab.no_grad():
        before = net(x).data.copy()
        net[1].running_mean.data += 0.5
        net[0].weight.data[0] *= -1
        after = net(x).data
    assert rel(after, _layer_by_layer(net, x).data) < 1e-5 and not np.allclose(before, after)


def test_fuse_conv_bn_eval_gives_one_convolution():
    net = _conv_bn_relu()
    conv, bn = net[0], net[1]
    weight = conv.weight.data.copy()
    fused = nn.fusion.fuse_conv_bn_eval(conv, bn)
    x = np.random.default_rng(36).standard_normal((2, 2, 5, 5)).astype(np.float32)
    assert rel(fused(x).data, bn(conv(x)).data) < 1e-5
    np.testing.assert_array_equal(conv.weight.data, weight)           # the layers are left as they were
    with pytest.raises(ValueError, match="fuse_conv_bn_eval: both layers must be in evaluation mode"):
        nn.fusion.fuse_conv_bn_eval(conv, bn.train())
    with pytest.raises(ValueError, match=r"Conv2d: only a batch norm in evaluation mode.*can be folded"):
        conv(x, batch_norm=bn)


def test_inference_fold_errors_name_the_convolution():
    block = _evaluated(nn.BasicBlock(4, 4), np.random.default_rng(37))
    with cnnlab.no_grad(), pytest.raises(ValueError, match=r"^Conv2d\(4, 4, kernel_size=\(3, 3\).*expected input with 4 "
                                                           r"channels.*got 3 channels"):
        block(np.zeros((1, 3, 6, 6), np.float32))


def test_conv2d_layer_checks_again_whatever_changed_since_its_last_call():
    """A Conv2d skips conv2d's checks only for the settings, shapes and dtypes they passed
    last time: a new input shape, a replaced weight or a changed setting is checked."""
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = np.ones((1, 2, 6, 6), np.float32)
    assert conv(x).shape == (1, 3, 6, 6) and conv(x).shape == (1, 3, 6, 6)
    with pytest.raises(ValueError, match=r"Conv2d\(2, 3.*expected input with 2 channels"):
        conv(np.ones((1, 4, 6, 6), np.float32))
    conv.stride = (2, 2)
    assert conv(x).shape == (1, 3, 3, 3)
    conv.stride = (0, 1)
    with pytest.raises(ValueError, match="stride must be positive"):
        conv(x)
    conv.stride = 1
    conv.weight = nn.Parameter(np.ones((3, 2, 9, 9), np.float32))
    with pytest.raises(ValueError, match="kernel height 9 is larger than the padded input height 8"):
        conv(x)
    conv.weight = nn.Parameter(np.ones((3, 2, 3, 3), np.float64))
    with pytest.raises(ValueError, match="input dtype float32 and weight dtype float64 differ"):
        conv(x)
    with pytest.raises(ValueError, match="input dtype float64 and bias dtype float32 differ"):
        conv(x.astype(np.float64))
    conv.bias = nn.Parameter(np.zeros(3, np.float64))
    assert conv(x.astype(np.float64)).dtype == np.float64
    assert conv(x[0].astype(np.float64)).shape == (3, 6, 6)        # unbatched
    with pytest.raises(TypeError, match="input must be a cnnlab.Tensor or numpy.ndarray"):
        conv([[1.0]])


def test_inference_folds_only_what_batch_norm_would_compute_the_same_way():
    """No fold where batch norm itself would do something else: a layer told to stop
    tracking statistics (it then normalises by the batch), or an unbatched input (which
    batch norm refuses); folding by hand with gradients recorded is refused."""
    net = _conv_bn_relu()
    x = np.random.default_rng(38).standard_normal((3, 2, 5, 5)).astype(np.float32)
    net[1].track_running_stats = False
    with cnnlab.no_grad():
        folded_off = net(x).data
    np.testing.assert_allclose(folded_off, _layer_by_layer(net, x).data, rtol=1e-6, atol=1e-6)
    net[1].track_running_stats = True
    with cnnlab.no_grad(), pytest.raises(ValueError, match=r"BatchNorm2d\(3.*expected a 4-D input"):
        net(x[0])
    with pytest.raises(ValueError, match="folding a batch norm is for inference"):
        net[0](x, batch_norm=net[1])
    net[1].running_var = cnnlab.Tensor(np.ones(4, np.float32))       # a bad checkpoint: the batch norm is named
    with cnnlab.no_grad(), pytest.raises(ValueError, match=r"^BatchNorm2d\(3.*running_var must have shape \(3,\)"):
        net(x)


def test_fuse_conv_bn_eval_keeps_frozen_weights_frozen():
    net = _conv_bn_relu()
    net[0].weight.requires_grad = False
    fused = nn.fusion.fuse_conv_bn_eval(net[0], net[1])
    assert not fused.weight.requires_grad and fused.bias.requires_grad


def test_conv2d_layer_converts_half_precision_input_on_every_call():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = np.random.default_rng(39).standard_normal((1, 2, 6, 6)).astype(np.float16)
    outs = [conv(x) for _ in range(3)]
    assert all(o.dtype == np.float32 for o in outs)
    np.testing.assert_array_equal(outs[0].data, outs[2].data)


def test_conv2d_layer_sees_a_setting_changed_in_place():
    conv = nn.Conv2d(2, 4, 3)
    conv.padding = [1, 1]
    x = np.ones((1, 2, 8, 8), np.float32)
    assert conv(x).shape == (1, 4, 8, 8)
    conv.padding[0] = 2
    assert conv(x).shape == (1, 4, 10, 8)
