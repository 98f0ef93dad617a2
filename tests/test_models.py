"""The model zoo: every model builds, runs forward and backward, and has the published size."""
import numpy as np
import pytest

import cnnlab
from cnnlab import functional as F, models


@pytest.mark.parametrize("name,shape,params", [
    ("mlp", (1, 28, 28), 784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10),
    ("lenet5", (1, 28, 28), 61_706),
    ("lenet5", (3, 32, 32), 83_126),
    ("mnist_cnn", (1, 28, 28), None),
    ("vgg_small", (1, 28, 28), None),
    ("allconv", (3, 32, 32), None),
    ("resnet20", (3, 32, 32), 269_722),   # "0.27M" in He et al. (2016), table 6
    ("resnet32", (3, 32, 32), 464_154),   # "0.46M"
    ("resnet56", (3, 32, 32), 853_018),   # "0.85M"
])
def test_zoo_models_train_one_step(name, shape, params, monkeypatch):
    cnnlab.manual_seed(0)
    model = models.create(name, shape, 10)
    if params is not None:
        assert model.num_parameters() == params
    # float32 end to end: no op may silently compute in float64
    upcast, apply = set(), cnnlab.autograd.Function.apply.__func__

    def checked(cls, *args, **kwargs):
        out = apply(cls, *args, **kwargs)
        if out.dtype.kind == "f" and out.dtype != np.float32:
            upcast.add((cls.__name__, str(out.dtype)))
        return out

    monkeypatch.setattr(cnnlab.autograd.Function, "apply", classmethod(checked))
    x = cnnlab.Tensor(np.random.default_rng(0).random((2,) + shape, dtype=np.float32))
    y = cnnlab.Tensor(np.array([3, 7]))
    loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
    loss.backward()
    assert loss.dtype == np.float32 and np.isfinite(loss.item())
    assert not upcast
    assert all(p.grad is not None and p.grad.shape == p.shape and p.grad.dtype == np.float32
               for p in model.parameters())


@pytest.mark.parametrize("name,params", [("resnet50", 25_557_032), ("resnet101", 44_549_160),
                                         ("resnet152", 60_192_808)])
def test_imagenet_resnets_match_published_sizes(name, params):
    model = models.create(name, (3, 224, 224), 1000)
    assert model.num_parameters() == params  # torchvision's counts for the same architectures
    if name == "resnet50":
        s = cnnlab.summary(model, (3, 224, 224), verbose=False)
        assert s.layers[-1].output_shape == (1000,)
        assert 4.0e9 < s.total_mult_adds < 4.2e9  # "3.8 x 10^9 FLOPs" (multiply-adds) in the paper, +fc and projections
    with cnnlab.no_grad():
        out = model.eval()(cnnlab.zeros(1, 3, 64, 64))
    assert out.shape == (1, 1000)


def test_allconv_and_vgg_accept_any_input_size():
    for name in ("allconv", "vgg_small"):
        model = models.create(name, (3, 32, 32), 10).eval()
        for hw in ((32, 32), (45, 37), (64, 20)):
            with cnnlab.no_grad():
                assert model(cnnlab.zeros(2, 3, *hw)).shape == (2, 10)


def test_resnet_shortcut_options():
    a = models.resnet20(shortcut="identity")
    b = models.resnet20(shortcut="projection")
    assert b.num_parameters() > a.num_parameters()
    assert not any("shortcut" in n for n, _ in a.named_parameters())
    assert any("shortcut" in n for n, _ in b.named_parameters())
    with pytest.raises(ValueError, match="depth must be 6n\\+2"):
        models._cifar_resnet(21, (3, 32, 32), 10, "identity")


def test_create_lists_models_on_a_wrong_name():
    with pytest.raises(ValueError, match=r"unknown model 'alexnet'; choose one of mlp, lenet5"):
        models.create("alexnet", (3, 32, 32), 10)
