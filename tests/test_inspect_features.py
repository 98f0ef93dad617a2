"""Looking inside a network: filters, feature maps, top activations, the feature space and
the training metrics, checked against answers known by construction on tiny models."""
import json

import numpy as np
import pytest
import torch

import cnnlab
from cnnlab import data, models, nn
from cnnlab.autograd import Tensor, no_grad
from cnnlab.inspect.features import embed, extract_features, knn_accuracy, nearest_neighbors, pixel_neighbors
from cnnlab.inspect.layers import capture
from cnnlab.inspect.maps import feature_maps, maps_grid
from cnnlab.inspect.metrics import confusion_matrix, read_metrics
from cnnlab.inspect.top import receptive_field, top_activations
from cnnlab.inspect.weights import filter_gradients, filter_grid, first_layer_filters, layer_filters
from cnnlab.train import fit


def small_net(seed=0, size=8, classes=3):
    cnnlab.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * (size // 2) ** 2, 5), nn.ReLU(), nn.Linear(5, classes))


def random_dataset(n=30, size=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return data.ArrayDataset(rng.integers(0, 256, (n, 1, size, size)).astype(np.uint8),
                             rng.integers(0, classes, n), classes=[f"c{i}" for i in range(classes)])


def modes(model):
    return [m.training for m in model.modules()]


# ----- filters -----
def test_first_layer_filters_is_exactly_the_first_conv_weight_even_when_nested():
    model = small_net()
    w = first_layer_filters(model)
    np.testing.assert_array_equal(w, model[0].weight.data)
    w[...] = 0
    assert np.abs(model[0].weight.data).sum() > 0, "a copy, not the parameter itself"
    resnet = models.resnet20(in_shape=(3, 8, 8))
    np.testing.assert_array_equal(first_layer_filters(resnet), resnet.stem[0].weight.data)
    np.testing.assert_array_equal(layer_filters(model, "3"), model[3].weight.data)
    with pytest.raises(ValueError, match="has no Conv2d"):
        first_layer_filters(models.mlp((1, 4, 4), hidden=(3,)))
    with pytest.raises(ValueError, match="not Conv2d; Conv2d layers: 0, 3"):
        layer_filters(model, "6")
    with pytest.raises(ValueError, match="valid layers"):
        layer_filters(model, "nope")


def test_filter_grid_shapes_and_range():
    rng = np.random.default_rng(0)
    gray = filter_grid(rng.standard_normal((6, 1, 5, 5)))       # 6 tiles: 2 rows of 3
    assert gray.shape == (2 * 6 - 1, 3 * 6 - 1)
    assert gray.min() == 0 and gray.max() == 1
    w = rng.standard_normal((8, 3, 3, 3))
    rgb = filter_grid(w, pad=2)                                  # 8 tiles: 3 rows of 3
    assert rgb.shape == (3 * 5 - 2, 3 * 5 - 2, 3) and rgb.min() >= 0 and rgb.max() <= 1
    w0 = w[0].transpose(1, 2, 0)
    np.testing.assert_allclose(rgb[:3, :3], (w0 - w0.min()) / (w0.max() - w0.min()))  # each filter its own scale
    every = filter_grid(w, normalize="all", channels="all")      # row f: filter f's 3 channels
    assert every.shape == (8 * 4 - 1, 3 * 4 - 1)
    np.testing.assert_allclose(every[4:7, 8:11], (w[1, 2] - w.min()) / (w.max() - w.min()))
    assert filter_grid(w, channels="mean").shape == (3 * 4 - 1, 3 * 4 - 1)
    flat = filter_grid(np.zeros((2, 1, 3, 3)), pad=0)
    np.testing.assert_array_equal(flat, np.full((3, 6), 0.5))   # a constant filter is mid-grey
    with pytest.raises(ValueError, match="normalize must be one of 'each', 'all'"):
        filter_grid(w, normalize="max")
    with pytest.raises(ValueError, match="channels='rgb' needs 3 input channels"):
        filter_grid(rng.standard_normal((2, 4, 3, 3)), channels="rgb")
    with pytest.raises(ValueError, match="4-D"):
        filter_grid(np.zeros((3, 3)))


def test_filter_gradients_match_torch_and_leave_the_model_untouched():
    cnnlab.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).double()
    ref = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(3 * 6 * 6, 4)).double()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 2, 6, 6)), rng.integers(0, 4, 5)
    torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    sentinel = np.full(model[0].weight.shape, 7.0)
    model[0].weight.grad = sentinel
    model[3].weight.requires_grad = False
    g = filter_gradients(model, x, y)
    np.testing.assert_allclose(g, ref[0].weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert model[0].weight.grad is sentinel and model[3].weight.grad is None
    assert model[3].weight.requires_grad is False
    with pytest.raises(ValueError, match="labels must be"):
        filter_gradients(model, x, y[:3])


# ----- feature maps -----
def test_feature_maps_of_a_hand_set_filter_equal_a_direct_conv2d():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten())
    sobel = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
    model[0].weight.data[...] = np.stack([sobel, sobel.T])[:, None]
    model[0].bias.data[...] = [0.1, -0.2]
    image = np.random.default_rng(0).random((1, 9, 9)).astype(np.float32)
    maps = feature_maps(model, image)
    assert list(maps) == ["0", "1"]                              # Flatten's output is not 4-D
    want = torch.nn.functional.conv2d(torch.from_numpy(image[None]), torch.from_numpy(model[0].weight.data),
                                      torch.from_numpy(model[0].bias.data), padding=1)[0].numpy()
    np.testing.assert_allclose(maps["0"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps["1"], np.maximum(want, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feature_maps(model, image[None], layers="1")["1"], maps["1"])
    with pytest.raises(ValueError, match="'2' outputs shape .* not a 4-D .* layers with feature maps: 0, 1"):
        feature_maps(model, image, ["2"])


def shifted(x, k):
    """x moved k pixels down and right, zeros coming in at the top and left."""
    out = np.zeros_like(x)
    out[..., k:, k:] = x[..., :x.shape[-2] - k, :x.shape[-1] - k]
    return out


@pytest.mark.parametrize("k", [1, 3])
def test_convolution_is_equivariant_away_from_the_borders(k):
    cnnlab.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1)).double()
    x = np.random.default_rng(1).standard_normal((1, 16, 16))
    a, b = feature_maps(model, x), feature_maps(model, shifted(x, k))
    m = 2  # two 3x3 layers: a unit sees 2 pixels each way
    for name in ("0", "1", "2"):
        np.testing.assert_allclose(b[name][:, k + m:16 - m, k + m:16 - m], a[name][:, m:16 - k - m, m:16 - k - m],
                                   rtol=1e-12, atol=1e-12)
        assert not np.allclose(a[name], b[name])


def test_a_stride_2_pool_turns_a_shift_of_2_into_a_shift_of_1():
    cnnlab.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)).double()
    x = np.random.default_rng(2).standard_normal((1, 16, 16))
    a, b = feature_maps(model, x)["2"], feature_maps(model, shifted(x, 2))["2"]
    np.testing.assert_array_equal(b[:, 2:7, 2:7], a[:, 1:6, 1:6])


class UsesActTwice(nn.Module):
    def __init__(self):
        self.act = nn.ReLU()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        return self.act(self.conv(self.act(x)))


def test_a_layer_used_twice_gives_two_entries():
    model = UsesActTwice()
    x = np.random.default_rng(0).standard_normal((1, 5, 5)).astype(np.float32)
    maps = feature_maps(model, x)
    assert list(maps) == ["act", "conv", "act (call 2)"]
    np.testing.assert_array_equal(maps["act"], np.maximum(x, 0))
    np.testing.assert_array_equal(maps["act (call 2)"], np.maximum(maps["conv"], 0))


def test_maps_grid_tiles_each_channel_on_its_own_scale():
    maps = np.random.default_rng(0).random((5, 4, 6))
    maps[3] = 0  # a dead channel
    grid = maps_grid(maps)
    assert grid.shape == (2 * 5 - 1, 3 * 7 - 1) and grid.min() == 0 and grid.max() == 1
    np.testing.assert_allclose(grid[:4, :6], (maps[0] - maps[0].min()) / (maps[0].max() - maps[0].min()))
    np.testing.assert_array_equal(grid[5:9, :6], 0)
    assert maps_grid(maps, max_channels=4).shape == (2 * 5 - 1, 2 * 7 - 1)
    joint = maps_grid(maps[:2], normalize="all", pad=0, ncols=2)
    np.testing.assert_allclose(joint, (np.hstack(maps[:2]) - maps[:2].min()) / np.ptp(maps[:2]))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        maps_grid(maps[0])


def test_images_the_model_cannot_take_are_refused_with_the_reason():
    model = models.lenet5()
    with pytest.raises(ValueError, match=r"cannot take input of shape \(3, 28, 28\).*expected input with 1 channels"):
        feature_maps(model, np.zeros((3, 28, 28)))
    with pytest.raises(ValueError, match=r"cannot take input of shape \(1, 32, 32\).*in_features"):
        feature_maps(model, np.zeros((1, 32, 32)))
    with pytest.raises(ValueError, match=r"one image \(C, H, W\)"):
        feature_maps(model, np.zeros((2, 1, 28, 28)))
    with pytest.raises(ValueError, match="valid layers: 0, 1"):
        feature_maps(model, np.zeros((1, 28, 28)), ["nope"])
    colour = np.zeros((4, 3, 28, 28), np.float32)
    with pytest.raises(ValueError, match="expected input with 1 channels"):
        top_activations(model, colour, "0")
    with pytest.raises(ValueError, match="expected input with 1 channels"):
        extract_features(model, colour)


# ----- top activations and receptive fields -----
def blob_dataset(n=12, size=12, at=(7, 4, 6)):
    """Dim noise, and one image (index at[0]) with a bright 3x3 square whose top-left is at[1:]."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 0.2, (n, 1, size, size)).astype(np.float32)
    i, r, c = at
    images[i, 0, r:r + 3, c:c + 3] = 1.0
    return data.ArrayDataset(images, np.zeros(n, np.int64))


def blob_net():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(2, 1, 3, bias=False))
    model[0].weight.data[0] = 1.0    # channel 0 sums a 3x3 window: a bright square excites it most
    model[0].weight.data[1] = -1.0
    model[3].weight.data[...] = 0.0
    model[3].weight.data[0, 0] = 1.0
    return model


def test_top_activations_finds_the_image_built_to_excite_the_channel():
    model, ds = blob_net(), blob_dataset()
    top = top_activations(model, ds, "0", channels=0, k=3, batch_size=5)   # three batches to merge
    assert top.indices.shape == (1, 3) and top.indices[0, 0] == 7
    assert tuple(top.positions[0, 0]) == (5, 7)             # the square's centre
    assert tuple(top.boxes[0, 0]) == (4, 6, 7, 9)           # its 3x3 field is the square
    np.testing.assert_allclose(top.values[0, 0], 9.0, rtol=1e-6)
    np.testing.assert_array_equal(top.patches[0][0], np.ones((1, 3, 3)))
    assert np.all(np.diff(top.values[0]) <= 0)

    deep = top_activations(model, ds, "3", k=4, batch_size=5)
    rf = cnnlab.summary(model, (1, 12, 12), verbose=False).layers[3].receptive_field
    assert deep.receptive_field.size == rf == (8, 8) and deep.receptive_field.jump == (2, 2)
    assert deep.indices[0, 0] == 7
    t, l, b, r = deep.boxes[0, 0]
    assert (b - t, r - l) == rf and t <= 4 and l <= 6 and b >= 7 and r >= 9  # the field holds the square
    i, j = deep.positions[0, 0]
    assert (t, l) == (-1 + 2 * i, -1 + 2 * j)               # start -1 (the first conv's padding), jump 2
    for row_p, row_b, row_x in zip(deep.positions[0], deep.boxes[0], deep.patches[0]):
        assert tuple(row_b) == deep.receptive_field.box(*row_p) and row_x.shape == (1, row_b[2] - row_b[0],
                                                                                      row_b[3] - row_b[1])


def test_top_activations_agree_with_a_brute_force_search_and_clip_at_borders():
    model, ds = small_net(seed=3), random_dataset(n=23)
    top = top_activations(model, data.DataLoader(ds, 8, transform=data.Normalize([0.5], [0.25])), "3",
                          channels=[0, 5], k=4, batch_size=7)
    x = (ds.images.astype(np.float32) / 255 - 0.5) / 0.25
    with no_grad():
        act = capture(model, Tensor(x), ["3"])["3"].data[:, [0, 5]]
    for r in range(2):
        best = act[:, r].reshape(23, -1).max(axis=1)
        want = np.argsort(-best, kind="stable")[:4]
        np.testing.assert_array_equal(top.indices[r], want)
        np.testing.assert_allclose(top.values[r], best[want], rtol=1e-6)
        for q, n in enumerate(want):
            assert top.positions[r, q].tolist() == list(np.unravel_index(act[n, r].argmax(), act.shape[2:]))
    assert top.receptive_field.size == (8, 8) and top.receptive_field.start == (-3, -3)
    assert tuple(top.receptive_field.box(0, 0)) == (0, 0, 5, 5)  # clipped at the top-left corner
    assert tuple(top.receptive_field.box(3, 3)) == (3, 3, 8, 8)  # and at the bottom-right
    with pytest.raises(ValueError, match=r"channels must be indices in 0\.\.5 \(layer '3' has 6 channels\)"):
        top_activations(model, ds, "3", channels=[6])
    with pytest.raises(ValueError, match="valid layers"):
        top_activations(model, ds, "30")


@pytest.mark.parametrize("layer", ["0", "1", "2", "3", "4.0", "4"])
def test_receptive_field_boxes_are_where_the_gradient_reaches(layer):
    """A unit's receptive field is the set of input pixels it depends on: with random
    weights and no ReLU, exactly where the gradient of that unit is non-zero."""
    cnnlab.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AvgPool2d(3, stride=2, padding=1),
                          nn.Conv2d(2, 2, 3, stride=2, padding="same"), nn.Conv2d(2, 2, 3, dilation=2, padding=2),
                          nn.Sequential(nn.Conv2d(2, 2, 1), nn.Conv2d(2, 1, 3))).double()
    x = Tensor(np.random.default_rng(0).standard_normal((1, 1, 21, 21)), requires_grad=True)
    out = capture(model, x, [layer], grad=True)[layer]
    rf = receptive_field(model, (1, 21, 21), layer)
    ho, wo = out.shape[2:]
    for i, j in {(0, 0), (ho // 2, wo // 2), (ho - 1, wo - 1), (0, wo - 1)}:
        x.grad = None
        out[0, 0, i, j].backward(retain_graph=True)
        rows, cols = np.nonzero(x.grad[0, 0])
        assert rf.box(i, j) == (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1), (i, j)


@pytest.mark.parametrize("layer", ["1", "1.body.1", "2", "3"])
def test_receptive_field_after_a_residual_sum(layer):
    """Behind a sum (a residual block's output, and the layer after it) the field is the
    widest branch's, as summary assumes: again exactly where the gradient reaches."""
    cnnlab.manual_seed(2)
    body = nn.Sequential(nn.Conv2d(2, 2, 3, stride=2, padding=1), nn.Conv2d(2, 2, 3, padding=1))
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Residual(body, nn.Conv2d(2, 2, 1, stride=2)),
                          nn.Identity(), nn.Conv2d(2, 1, 3, padding=1)).double()
    x = Tensor(np.random.default_rng(0).standard_normal((1, 1, 17, 17)), requires_grad=True)
    out = capture(model, x, [layer], grad=True)[layer]
    rf = receptive_field(model, (1, 17, 17), layer)
    for i, j in {(0, 0), (4, 4), (8, 8), (3, 8)}:
        x.grad = None
        out[0, 0, i, j].backward(retain_graph=True)
        rows, cols = np.nonzero(x.grad[0, 0])
        assert rf.box(i, j) == (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1), (i, j)


# ----- the feature space -----
class TwoHeads(nn.Module):
    """The classifier is defined before the hidden layer but called after it: the last
    Linear *called* is the classifier."""

    def __init__(self):
        self.head = nn.Linear(8, 3)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.GlobalAvgPool2d()
        self.hidden = nn.Linear(4, 8)

    def forward(self, x):
        return self.head(self.hidden(self.pool(self.conv(x))).relu())


def test_extract_features_gives_the_input_of_the_last_linear_layer():
    ds = random_dataset(n=20, size=16)
    model = models.lenet5(in_shape=(1, 16, 16), num_classes=3)
    norm = data.Normalize([0.5], [0.25])
    f, y = extract_features(model, data.DataLoader(ds, 4, transform=norm), batch_size=6)
    assert f.shape == (20, model[-1].in_features) == (20, 84)
    np.testing.assert_array_equal(y, ds.labels)
    with no_grad():
        want = model[:-1](Tensor(norm(ds.images.astype(np.float32) / 255))).data
    np.testing.assert_allclose(f, want, rtol=1e-5, atol=1e-6)
    g, _ = extract_features(TwoHeads(), ds, limit=7)
    assert g.shape == (7, 8)
    h, _ = extract_features(model, ds, layer="3")
    assert h.shape == (20, 16 * 4 * 4)
    with pytest.raises(ValueError, match="called no Linear layer"):
        extract_features(nn.Sequential(nn.Conv2d(1, 2, 3)), ds)


def two_clusters(n=20, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2 * n, d))
    x[n:] += 30
    return x, np.repeat([0, 1], n)


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_embed_returns_n_by_2_and_keeps_separated_clusters_apart(method):
    x, y = two_clusters()
    points = embed(x, method=method, perplexity=10)
    assert points.shape == (40, 2) and np.all(np.isfinite(points))
    assert knn_accuracy(points, y, k=5) == 1.0
    with pytest.raises(ValueError, match="method must be one of 'tsne', 'pca'"):
        embed(x, method="umap")


def test_embed_refuses_a_perplexity_beyond_the_number_of_points():
    with pytest.raises(ValueError, match="perplexity must lie between 0 and the number of points"):
        embed(np.random.default_rng(0).standard_normal((10, 3)), perplexity=30)


def test_knn_accuracy_known_answers():
    line = np.array([[0.0], [1.0], [10.0], [11.0]])
    assert knn_accuracy(line, np.array([0, 0, 1, 1]), k=1) == 1.0
    assert knn_accuracy(line, np.array([0, 1, 0, 1]), k=1) == 0.0
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 2)) * 100
    labels = np.repeat(np.arange(4), 50)
    assert knn_accuracy(centres[labels] + rng.standard_normal((200, 2)), labels, k=10) == 1.0
    chance = knn_accuracy(rng.random((800, 2)), rng.integers(0, 4, 800), k=10)
    assert 0.18 < chance < 0.32
    with pytest.raises(ValueError, match="k must be below the number of points"):
        knn_accuracy(line, np.array([0, 0, 1, 1]), k=4)


def test_nearest_neighbors_start_with_the_query_itself():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((50, 8))
    for metric in ("euclidean", "cosine"):
        nn_idx = nearest_neighbors(f[[3, 10, 49]], f, k=4, metric=metric)
        assert nn_idx.shape == (3, 4) and nn_idx[:, 0].tolist() == [3, 10, 49]
    points = np.array([[1.0, 0.0], [10.0, 10.0]])
    assert nearest_neighbors([3.0, 3.0], points, k=2).tolist() == [[0, 1]]              # closer
    assert nearest_neighbors([3.0, 3.0], points, k=2, metric="cosine").tolist() == [[1, 0]]  # same direction
    images = rng.integers(0, 256, (20, 1, 6, 6)).astype(np.uint8)
    assert pixel_neighbors(images[[5, 2]], images, k=3)[:, 0].tolist() == [5, 2]
    with pytest.raises(ValueError, match="metric must be one of 'euclidean', 'cosine'"):
        nearest_neighbors(f[:1], f, metric="manhattan")


# ----- metrics -----
def test_confusion_matrix_counts_and_rates():
    model, ds = small_net(seed=1), random_dataset(n=40)
    cm = confusion_matrix(model, ds, batch_size=16)
    with no_grad():
        pred = model(Tensor(ds.images.astype(np.float32) / 255)).data.argmax(axis=1)
    want = np.zeros((3, 3), np.int64)
    np.add.at(want, (ds.labels, pred), 1)
    np.testing.assert_array_equal(cm.counts, want)
    np.testing.assert_allclose(cm.rates, want / want.sum(axis=1, keepdims=True))
    assert cm.accuracy == pytest.approx(np.trace(want) / 40) and cm.classes == ["c0", "c1", "c2"]
    np.testing.assert_allclose(cm.per_class_accuracy, cm.rates.diagonal())


def test_read_metrics_reads_what_fit_writes(tmp_path):
    cnnlab.manual_seed(0)
    model, ds = small_net(classes=3), random_dataset(n=24)
    path = tmp_path / "metrics.jsonl"
    fit(model, data.DataLoader(ds, 12), cnnlab.optim.SGD(model.parameters(), lr=0.01), 2,
        test_loader=data.DataLoader(ds, 12), metrics_path=str(path), progress=False, log=None)
    m = read_metrics(path)
    assert m["epoch"] == [1, 2]
    assert set(m) == {"epoch", "train_loss", "train_accuracy", "lr", "seconds", "images_per_second",
                      "test_loss", "test_accuracy", "test_per_class_accuracy"}
    assert len(m["test_per_class_accuracy"][1]) == 3
    (tmp_path / "partial.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 0.5}) + "\n\n"
                                            + json.dumps({"epoch": 2, "test_loss": 0.4}) + "\n")
    assert read_metrics(tmp_path / "partial.jsonl") == {"epoch": [1, 2], "train_loss": [0.5, None],
                                                        "test_loss": [None, 0.4]}


def test_read_metrics_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics file .*missing.jsonl"):
        read_metrics(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl holds no epochs"):
        read_metrics(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, "train_lo\n')
    with pytest.raises(ValueError, match="bad.jsonl, line 3: not valid JSON"):
        read_metrics(tmp_path / "bad.jsonl")
    (tmp_path / "list.jsonl").write_text('{"epoch": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match="list.jsonl, line 2: expected a JSON object"):
        read_metrics(tmp_path / "list.jsonl")


# ----- modes -----
class Probe(nn.Module):
    """Records the mode it runs in."""

    def __init__(self):
        self.seen = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


def test_every_tool_runs_in_eval_mode_and_restores_each_layers_mode():
    cnnlab.manual_seed(0)
    probe = Probe()
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), probe, nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    model.train()
    model[2].eval()          # a frozen batch norm inside a training model
    before = modes(model)
    ds = random_dataset(n=10)
    x = ds.images[:4].astype(np.float32) / 255
    calls = [lambda: feature_maps(model, x[0]), lambda: filter_gradients(model, x, ds.labels[:4]),
             lambda: top_activations(model, ds, "0", k=2), lambda: extract_features(model, ds),
             lambda: confusion_matrix(model, ds), lambda: receptive_field(model, (1, 8, 8), "4")]
    for call in calls:
        call()
        assert modes(model) == before
    assert probe.seen and not any(probe.seen)
    np.testing.assert_array_equal(feature_maps(model, x[0])["3"], feature_maps(model, x[0])["3"])  # no dropout
    with pytest.raises(ValueError):
        top_activations(model, ds, "0", channels=[9])   # fails inside the forward loop
    assert modes(model) == before
