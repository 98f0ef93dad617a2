"""Attribution maps and activation maximization on tiny hand-built models with known answers.

The main model is a vertical-edge detector: one 3x3 Sobel-x filter (bright to the right of
dark gives a positive response), ReLU, global average pooling and a linear layer scoring
class 0 as +4 x (mean edge response) and class 1 as its negative. On an image of zeros
with a bright vertical bar, every method must light up next to the bar's left edge and
give exactly nothing far from it.
"""
import numpy as np
import pytest

import cnnlab
from cnnlab import nn
from cnnlab.inspect.attribution import gaussian_blur, grad_cam, occlusion, saliency, smoothgrad
from cnnlab.inspect.synthesis import maximize_activation

SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)
H = W = 16
BAR = (7, 9)  # columns of the bright bar; its rising (dark-to-bright) edge is between 6 and 7


def edge_model(extra=()):
    conv = nn.Conv2d(1, 1, 3, padding=1)
    conv.weight.data[...] = SOBEL_X
    conv.bias.data[...] = 0
    fc = nn.Linear(1, 2)
    fc.weight.data[...] = [[4.0], [-4.0]]
    fc.bias.data[...] = 0
    return nn.Sequential(conv, nn.ReLU(), *extra, nn.GlobalAvgPool2d(), fc)


def bar_image(h=H, w=W):
    x = np.zeros((1, h, w), np.float32)
    x[:, :, BAR[0]:BAR[1]] = 1.0
    return x


# columns whose 3x3 neighbourhood sees the rising edge (responses at 6 and 7 are positive),
# and columns far from the bar, more than a patch (4) and a receptive field away
EDGE_COLS = [5, 6, 7, 8]
FLAT_COLS = [0, 1, 2, 13, 14, 15]


def snapshot(model):
    return ({k: v.copy() for k, v in model.state_dict().items()},
            [(dict(vars(m)).keys(), m.training) for m in model.modules()],
            [(p.requires_grad, p.grad) for p in model.parameters()])


def assert_untouched(model, before):
    state, flags, params = before
    after = snapshot(model)
    for k in state:
        np.testing.assert_array_equal(after[0][k], state[k], err_msg=f"{k} changed")
    assert [(set(k), t) for k, t in after[1]] == [(set(k), t) for k, t in flags], "training flags or attributes changed"
    assert [rg for rg, _ in after[2]] == [rg for rg, _ in params], "requires_grad changed"
    assert all(g is None for _, g in after[2]), "a parameter was left with a .grad"


@pytest.fixture
def model():
    return edge_model()


# ----- occlusion -----

def test_occlusion_lights_up_on_the_edge_and_is_zero_on_flat_regions(model):
    r = occlusion(model, bar_image(), patch=4, stride=2)
    assert r.heatmap.shape == (H, W) and r.heatmap.dtype == np.float32
    assert r.target == 0 and isinstance(r.target, int)
    # s = 4 * mean ReLU(Sobel) over 16x16; the edge gives 4 per row at columns 6 and 7 (3 on the
    # top and bottom rows, where the zero padding cuts the filter)
    s = 4 * (14 * 8 + 2 * 6) / (H * W)
    assert r.probability == pytest.approx(1 / (1 + np.exp(-2 * s)), rel=1e-6)
    edge, flat = r.heatmap[:, EDGE_COLS].mean(), np.abs(r.heatmap[:, FLAT_COLS]).mean()
    assert edge > 0 and flat == 0.0
    assert edge > 10 * flat


def test_occlusion_with_one_patch_is_the_drop_for_the_whole_image(model):
    x = bar_image()
    fill = np.zeros_like(x)  # a black image: no edge (even at the zero padding), both classes score 0, p = 1/2
    r = occlusion(model, x, patch=H, stride=1, baseline=fill)
    np.testing.assert_allclose(r.heatmap, r.probability - 0.5, rtol=1e-6)


@pytest.mark.parametrize("baseline", [0.0, "mean", "blur"])
def test_occlusion_baselines_and_batches(model, baseline):
    x = np.stack([bar_image(), bar_image()[:, :, ::-1].copy()])  # the second bar's rising edge is elsewhere
    batch = occlusion(model, x, patch=4, stride=2, baseline=baseline, batch_size=7)
    assert batch.heatmap.shape == (2, H, W) and batch.target.shape == (2,)
    for k in range(2):
        one = occlusion(model, x[k], patch=4, stride=2, baseline=baseline)
        np.testing.assert_allclose(batch.heatmap[k], one.heatmap, rtol=1e-5, atol=1e-7)
        assert batch.probability[k] == pytest.approx(one.probability)
    # per-image targets and a Tensor input give the same as the single-image call
    r = occlusion(model, cnnlab.Tensor(x), target=[1, 0], patch=4, stride=2, baseline=baseline)
    np.testing.assert_allclose(r.heatmap[0], occlusion(model, x[0], target=1, patch=4, stride=2,
                                                       baseline=baseline).heatmap, rtol=1e-5, atol=1e-7)


def test_occlusion_coarse_has_input_resolution_and_agrees_with_fine(model):
    x = bar_image(32, 32)
    fine = occlusion(model, x, patch=8, stride=2).heatmap
    coarse = occlusion(model, x, patch=8, coarse=True).heatmap
    assert coarse.shape == (32, 32)
    assert np.corrcoef(fine.ravel(), coarse.ravel())[0, 1] > 0.8
    assert coarse[:, 5:10].mean() > 10 * np.abs(coarse[:, 20:]).mean()


def test_every_pixel_is_covered_when_the_stride_misses_the_edge(model):
    # 16 - 5 = 11 is not a multiple of 3: a last patch flush with the edge covers columns 11-15
    r = occlusion(model, bar_image(), patch=5, stride=3, baseline=0.5)
    assert np.all(r.heatmap[:, -1] != 0) and np.all(r.heatmap[-1, :] != 0)


# ----- gradients -----

def test_saliency_is_the_edge_filter_s_receptive_field(model):
    r = saliency(model, bar_image())
    assert r.heatmap.shape == (H, W) and r.gradient.shape == (1, H, W) and r.target == 0
    # d score / dx: positions 6 and 7 (positive responses) each pass 4/256 * Sobel back
    expected = np.zeros((H + 2, W + 2))
    relu = np.zeros((H, W))
    relu[:, 6:8] = 1
    for i in range(H):
        for j in range(W):
            expected[i:i + 3, j:j + 3] += relu[i, j] * 4 / (H * W) * SOBEL_X
    np.testing.assert_allclose(r.gradient[0], expected[1:-1, 1:-1], atol=1e-7)
    assert r.heatmap[:, EDGE_COLS].mean() > 10 * r.heatmap[:, FLAT_COLS].mean()
    assert np.all(r.heatmap[:, FLAT_COLS] == 0)
    # the other class's score has exactly the opposite gradient
    np.testing.assert_allclose(saliency(model, bar_image(), target=1).gradient, -r.gradient)


def test_smoothgrad_without_noise_is_saliency_and_is_batched(model):
    x = bar_image()
    plain = saliency(model, x)
    same = smoothgrad(model, x, samples=1, noise=0.0)
    np.testing.assert_allclose(same.gradient, plain.gradient, rtol=1e-6)
    np.testing.assert_allclose(same.heatmap, plain.heatmap, rtol=1e-6)
    noisy = smoothgrad(model, x, samples=100, noise=0.1, batch_size=64)
    again = smoothgrad(model, x, samples=100, noise=0.1, batch_size=100)
    np.testing.assert_allclose(noisy.gradient, again.gradient, rtol=1e-5, atol=1e-8)  # batching changes nothing
    # noise makes the filter fire on flat regions too, but there its gradients (shifted
    # Sobel kernels, which sum to zero) average out, while on the edge they add up; not
    # next to the zero padding, which breaks the symmetry
    flat = noisy.heatmap[1:-1, [1, 2, 13, 14]].mean()
    assert noisy.heatmap[:, EDGE_COLS].mean() > 5 * flat


def test_gradient_methods_on_a_batch_match_single_images(model):
    x = np.stack([bar_image(), bar_image()[:, ::-1, ::-1].copy()])
    for fn in (saliency, lambda m, im: smoothgrad(m, im, samples=3, noise=0.1)):
        both = fn(model, x)
        assert both.heatmap.shape == (2, H, W)
        for k in range(2):
            np.testing.assert_allclose(both.heatmap[k], fn(model, x[k]).heatmap, rtol=1e-5, atol=1e-9)


def test_grad_cam_peaks_at_the_edge(model):
    r = grad_cam(model, bar_image(), "0")
    assert r.heatmap.shape == (H, W) and r.cam.shape == (H, W)
    assert r.heatmap.max() == pytest.approx(1.0) and r.heatmap.min() >= 0
    # the layer has the input's resolution, so the upsampling is the identity
    np.testing.assert_allclose(r.heatmap, r.cam / r.cam.max(), rtol=1e-6)
    peak_cols = set(np.argwhere(r.heatmap == r.heatmap.max())[:, 1])
    assert peak_cols <= {6, 7}
    assert np.all(r.heatmap[:, FLAT_COLS] == 0)
    # a pooled layer: a coarse map, upsampled bilinearly to the input
    pooled = edge_model(extra=(nn.MaxPool2d(4),))
    r = grad_cam(pooled, bar_image(), "2")
    assert r.cam.shape == (4, 4) and r.heatmap.shape == (H, W)
    assert r.heatmap[:, 4:8].mean() > 10 * r.heatmap[:, 12:].mean()
    batch = grad_cam(pooled, np.stack([bar_image()] * 2), "2")
    np.testing.assert_allclose(batch.heatmap[1], r.heatmap, rtol=1e-6)


def test_calls_leave_the_model_as_they_found_it():
    model = edge_model(extra=(nn.BatchNorm2d(1), nn.Dropout(0.5)))
    model.train()
    model[2].running_mean.data[...] = 0.5  # running statistics must not move (eval mode)
    x = bar_image()
    for call in (lambda: occlusion(model, x, patch=4, stride=4), lambda: saliency(model, x),
                 lambda: smoothgrad(model, x, samples=2), lambda: grad_cam(model, x, "0"),
                 lambda: maximize_activation(model, "1", 0, shape=(1, H, W), steps=3)):
        before = snapshot(model)
        call()
        assert_untouched(model, before)
    # results are deterministic, which they would not be if Dropout were active
    np.testing.assert_array_equal(saliency(model, x).gradient, saliency(model, x).gradient)
    assert model.training and model[3].training
    model.eval()  # and an eval-mode model stays in eval mode
    before = snapshot(model)
    saliency(model, x)
    assert_untouched(model, before)
    # a parameter frozen by the user stays frozen, one that trains keeps training
    model[0].weight.requires_grad = False
    saliency(model, x)
    assert model[0].weight.requires_grad is False and model[5].weight.requires_grad is True


# ----- activation maximization -----

def test_maximize_activation_raises_the_activation_tenfold(model):
    # the measure: the mean ReLU'd edge response. The start is black plus faint noise, so
    # small but positive (a grey start would already respond at the zero-padded border)
    r = maximize_activation(model, "1", 0, shape=(1, H, W), steps=60, seed=0, background=0.0)
    assert r.start_value > 0
    assert r.final_value >= 10 * r.start_value
    assert r.image.shape == (1, H, W) and r.image.dtype == np.float32
    assert r.display.min() >= 0 and r.display.max() <= 1
    assert r.history.shape == (60,) and r.history[-10:].mean() > r.history[:10].mean()
    # what the filter likes is dark-to-bright from left to right
    assert (np.diff(r.display[0], axis=1) > 0).mean() > (np.diff(r.display[0], axis=1) < 0).mean()
    # a class logit, with a normalisation: image is (display - mean) / std
    c = maximize_activation(model, target_class=0, shape=(1, H, W), steps=60, mean=0.5, std=0.25)
    assert c.final_value > c.start_value + 1
    np.testing.assert_allclose(c.image, (c.display - 0.5) / 0.25, rtol=1e-5, atol=1e-6)
    again = maximize_activation(model, target_class=0, shape=(1, H, W), steps=60, mean=0.5, std=0.25)
    np.testing.assert_array_equal(again.image, c.image)  # seeded
    # a unit that is silent on the start (ReLU behind a negative bias) is woken up by noise
    model[0].bias.data[...] = -1.0
    silent = maximize_activation(model, "1", 0, shape=(1, H, W), steps=60, background=0.0)
    assert silent.start_value == 0 and silent.final_value > 0.1


def test_gaussian_blur_keeps_flat_images_and_the_mass():
    x = np.random.default_rng(0).random((2, 9, 11))
    np.testing.assert_allclose(gaussian_blur(np.full((3, 5, 5), 0.3), 2.0), 0.3, rtol=1e-12)
    b = gaussian_blur(x, 1.0)
    assert b.shape == x.shape and b.std() < x.std()
    np.testing.assert_array_equal(gaussian_blur(x, 0), x)


# ----- errors -----

def test_errors_name_what_was_expected(model):
    x = bar_image()
    with pytest.raises(ValueError, match=r"expected an image \(C, H, W\) or a batch .* got shape \(16, 16\)"):
        saliency(model, x[0])
    with pytest.raises(ValueError, match="expects images with 1 channels .* got 3 channels"):
        occlusion(model, np.zeros((3, H, W), np.float32))
    fixed = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 14 * 14, 3))
    with pytest.raises(ValueError, match=r"does not accept images of shape \(1, 20, 20\).*in_features"):
        saliency(fixed, np.zeros((1, 20, 20), np.float32))
    with pytest.raises(ValueError, match=r"target class 2 is out of range: the model has 2 classes \(0 to 1\)"):
        occlusion(model, x, target=2)
    with pytest.raises(ValueError, match="out of range"):
        smoothgrad(model, x, target=-1)
    with pytest.raises(ValueError, match="layer 'conv9' does not exist .* valid layers: 0, 1, 2, 3"):
        grad_cam(model, x, "conv9")
    with pytest.raises(ValueError, match=r"layer '3' \(Linear\) outputs shape \(1, 2\); Grad-CAM needs a 4-D.*0, 1"):
        grad_cam(model, x, "3")
    with pytest.raises(ValueError, match="patch"):
        occlusion(model, x, patch=17)
    with pytest.raises(ValueError, match="baseline"):
        occlusion(model, x, baseline="noise")
    with pytest.raises(ValueError, match=r"channel 1 is out of range: layer '0' outputs 1 channels \(0 to 0\)"):
        maximize_activation(model, "0", 1, shape=(1, H, W), steps=2)
    with pytest.raises(ValueError, match="valid layers"):
        maximize_activation(model, "fc", 0, shape=(1, H, W), steps=2)
    with pytest.raises(ValueError, match=r"target_class 5 is out of range: the model has 2 classes \(0 to 1\)"):
        maximize_activation(model, target_class=5, shape=(1, H, W), steps=2)
    with pytest.raises(ValueError, match="either layer"):
        maximize_activation(model, shape=(1, H, W))
    with pytest.raises(ValueError, match="expects images with 1 channels"):
        maximize_activation(model, "0", 0, shape=(3, H, W))
