"""The trainer: it learns, it resumes exactly, it is deterministic, it stops cleanly."""
import json
import os
import signal

import numpy as np
import pytest

import cnnlab
from cnnlab import data, nn, optim
from cnnlab.optim import lr_scheduler
from cnnlab.train import (CheckpointError, TrainingDiverged, TrainingInterrupted, evaluate, fit, load_checkpoint,
                          save_checkpoint)


def toy_dataset(n=96, seed=0):
    """Two classes a small CNN can tell apart: a bright blob on the left or on the right."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.integers(0, 60, (n, 1, 8, 8)).astype(np.uint8)
    for i, y in enumerate(labels):
        images[i, 0, 2:6, (1 if y == 0 else 5):(3 if y == 0 else 7)] += 150
    return data.ArrayDataset(images, labels, classes=["left", "right"], name="toy")


def small_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.2),
                         nn.Flatten(), nn.Linear(4 * 16, 2))


def run(tmp_path, epochs, resume=False, interrupt_at=None, seed=0, name="run"):
    """Train small_cnn on the toy set with augmentation, dropout and a per-batch schedule:
    everything that could break exact resumption."""
    cnnlab.manual_seed(seed)
    model = small_cnn()
    ds = toy_dataset()
    tf = data.Compose([data.RandomTranslate(1), data.Normalize([0.2], [0.3])])
    loader = data.DataLoader(ds, batch_size=16, shuffle=True, transform=tf, seed=seed)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=4 * len(loader))
    if interrupt_at is not None:
        calls = {"n": 0}
        step = opt.step

        def step_then_maybe_interrupt():
            step()
            calls["n"] += 1
            if calls["n"] == interrupt_at:
                os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, in the middle of a batch
        opt.step = step_then_maybe_interrupt
    fit(model, loader, opt, epochs, scheduler=sched, scheduler_interval="batch",
        checkpoint_path=str(tmp_path / name / "ckpt.npz"), metrics_path=str(tmp_path / name / "metrics.jsonl"),
        resume=resume, progress=False, log=None, test_loader=data.DataLoader(ds, batch_size=32))
    return model


def test_small_cnn_overfits_one_batch():
    cnnlab.manual_seed(0)
    model = small_cnn()
    model.eval()  # no dropout: a pure optimisation check
    x, y = next(iter(data.DataLoader(toy_dataset(16), batch_size=16)))
    opt = optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        loss = cnnlab.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01
    assert (model(x).data.argmax(1) == y.data).all()


def test_fit_learns_and_writes_metrics_and_checkpoint(tmp_path):
    model = run(tmp_path, 4)
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    assert lines[-1]["test_accuracy"] > 0.9
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert len(lines[-1]["test_per_class_accuracy"]) == 2
    ckpt = load_checkpoint(str(tmp_path / "run" / "ckpt.npz"))
    assert ckpt.meta["epoch"] == 4 and ckpt.meta["batch"] == 0
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(ckpt.model_state[k], v)
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".tmp")]


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path):
    full = run(tmp_path, 4, name="full")
    run(tmp_path, 2, name="split")                     # stop after two epochs...
    resumed = run(tmp_path, 4, resume=True, name="split")  # ...and continue to four
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    epochs = [json.loads(l)["epoch"] for l in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]


def test_ctrl_c_saves_mid_epoch_and_resume_continues_exactly(tmp_path):
    full = run(tmp_path, 3, name="full")
    with pytest.raises(TrainingInterrupted, match="batch 3"):
        run(tmp_path, 3, interrupt_at=9, name="cut")      # 6 batches per epoch: stops in epoch 2
    ckpt = load_checkpoint(str(tmp_path / "cut" / "ckpt.npz"))
    assert (ckpt.meta["epoch"], ckpt.meta["batch"], ckpt.meta["interrupted"]) == (1, 3, True)
    resumed = run(tmp_path, 3, resume=True, name="cut")
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_same_seed_gives_bit_identical_weights_and_another_seed_does_not(tmp_path):
    a, b, c = run(tmp_path, 2, name="a"), run(tmp_path, 2, name="b"), run(tmp_path, 2, seed=1, name="c")
    for k in a.state_dict():
        np.testing.assert_array_equal(a.state_dict()[k], b.state_dict()[k])
    assert not np.array_equal(a.state_dict()["0.weight"], c.state_dict()["0.weight"])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow on the way to NaN is the point
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cnnlab.manual_seed(0)
    model = small_cnn()
    loader = data.DataLoader(toy_dataset(), batch_size=16, shuffle=True)
    opt = optim.SGD(model.parameters(), lr=0.1)
    path = str(tmp_path / "ckpt.npz")
    fit(model, loader, opt, 1, checkpoint_path=path, progress=False, log=None)
    good = load_checkpoint(path).model_state
    opt.param_groups[0]["lr"] = 1e30  # a fresh run that diverges within a few steps
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at epoch 1.*last good checkpoint is kept"):
        fit(model, loader, opt, 3, checkpoint_path=path, progress=False, log=None)
    after = load_checkpoint(path)
    assert after.meta["epoch"] == 1
    for k in good:
        np.testing.assert_array_equal(good[k], after.model_state[k])


def test_evaluate_reports_accuracy_per_class_and_confusion():
    ds = data.ArrayDataset(np.zeros((6, 1, 4, 4), np.uint8), np.array([0, 0, 1, 1, 1, 2]), classes=["a", "b", "c"])

    class AlwaysOne(nn.Module):
        def forward(self, x):
            logits = np.zeros((x.shape[0], 3), np.float32)
            logits[:, 1] = 1
            return cnnlab.Tensor(logits)

    ev = evaluate(AlwaysOne(), data.DataLoader(ds, batch_size=4))
    assert ev["accuracy"] == pytest.approx(3 / 6)
    assert ev["per_class_accuracy"] == [0.0, 1.0, 0.0]
    assert ev["confusion"] == [[0, 2, 0], [0, 3, 0], [0, 1, 0]]


def test_evaluate_with_flip_tta_averages_an_image_and_its_mirror():
    """A model whose answer depends on which half of the image is brighter: mirroring
    swaps the halves, so flip TTA's averaged probabilities differ from the plain ones."""
    rng = np.random.default_rng(0)
    ds = data.ArrayDataset(rng.integers(0, 256, (40, 1, 2, 4), dtype=np.uint8), rng.integers(0, 2, 40))

    def halves(img):
        left, right = img[:, 0, :, :2].sum((1, 2)), img[:, 0, :, 2:].sum((1, 2))
        # not antisymmetric, so mirroring changes more than the sign
        return np.stack([left - 0.5 * right, right - 0.2 * left], axis=1).astype(np.float32)

    class Halves(nn.Module):
        def forward(self, x):
            return cnnlab.Tensor(halves(x.data))

    x = ds.images.astype(np.float32) / 255

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p = (softmax(halves(x)) + softmax(halves(x[..., ::-1]))) / 2
    ev = evaluate(Halves(), data.DataLoader(ds, batch_size=8), tta="flip")
    plain = evaluate(Halves(), data.DataLoader(ds, batch_size=8))
    confusion = np.zeros((2, 2), int)
    np.add.at(confusion, (ds.labels, p.argmax(1)), 1)
    assert ev["confusion"] == confusion.tolist()
    assert ev["confusion"] != plain["confusion"]          # the mirror changed some predictions
    assert ev["loss"] == pytest.approx(float(-np.log(p[np.arange(40), ds.labels]).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="tta must be one of"):
        evaluate(Halves(), data.DataLoader(ds, batch_size=8), tta="rotate")


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(str(tmp_path / "missing.npz"))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.npz: not a cnnlab checkpoint"):
        load_checkpoint(str(junk))
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a cnnlab checkpoint"):
        load_checkpoint(str(other))
    path = str(tmp_path / "lenet.npz")
    save_checkpoint(path, cnnlab.models.lenet5(), meta={"epoch": 0})
    with pytest.raises(CheckpointError, match="does not fit this model"):
        fit(small_cnn(), data.DataLoader(toy_dataset(), batch_size=16), optim.SGD(small_cnn().parameters(), lr=0.1),
            1, checkpoint_path=path, resume=True, progress=False, log=None)


def test_resume_refuses_a_differently_set_up_loader(tmp_path):
    run(tmp_path, 1, name="x")
    cnnlab.manual_seed(0)
    model = small_cnn()
    loader = data.DataLoader(toy_dataset(), batch_size=8, shuffle=True, seed=0)
    with pytest.raises(ValueError, match=r"cannot resume .*batch_size 16 -> 8"):
        fit(model, loader, optim.SGD(model.parameters(), lr=0.1), 2,
            checkpoint_path=str(tmp_path / "x" / "ckpt.npz"), resume=True)


def test_empty_loader_is_an_error():
    tiny = data.ArrayDataset(np.zeros((3, 1, 8, 8), np.uint8), np.zeros(3, np.int64))
    model = small_cnn()
    with pytest.raises(ValueError, match=r"train_loader yields no batches \(3 images, batch_size 16, drop_last=True\)"):
        fit(model, data.DataLoader(tiny, batch_size=16, drop_last=True), optim.SGD(model.parameters(), lr=0.1), 1)


def test_float64_model_trains_from_the_float32_loader_and_modes_are_restored():
    cnnlab.manual_seed(0)
    model = small_cnn().double()
    model[3].eval()  # a dropout switched off by hand stays off after evaluate
    loader = data.DataLoader(toy_dataset(), batch_size=16)
    fit(model, loader, optim.SGD(model.parameters(), lr=0.1), 1)
    assert model[0].weight.dtype == np.float64
    model.train()
    model[3].eval()
    evaluate(model, loader)
    assert model.training and not model[3].training


def test_infinite_weights_are_not_saved(tmp_path):
    cnnlab.manual_seed(0)
    model = small_cnn()
    loader = data.DataLoader(toy_dataset(), batch_size=16)
    path = str(tmp_path / "c.npz")
    calls = {"n": 0}

    def loss_fn(logits, y):  # finite loss, infinite gradient on the last batch
        calls["n"] += 1
        loss = cnnlab.functional.cross_entropy(logits, y)
        if calls["n"] < len(loader):
            return loss
        return loss + ((logits - logits.detach()) ** 0.5).sum()  # adds 0, but d/dx sqrt(x) at 0 is inf
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged):
        fit(model, loader, optim.SGD(model.parameters(), lr=1.0), 1, loss_fn=loss_fn, checkpoint_path=path)
    assert not (tmp_path / "c.npz").exists()


def test_eval_every_evaluates_every_nth_epoch_and_the_last(tmp_path):
    cnnlab.manual_seed(0)
    ds = toy_dataset()
    loader = data.DataLoader(ds, batch_size=16, shuffle=True, seed=0)
    model = small_cnn()
    lines = []
    history = fit(model, loader, optim.SGD(model.parameters(), lr=0.05), 5, eval_every=2,
                  test_loader=data.DataLoader(ds, batch_size=32), metrics_path=str(tmp_path / "m.jsonl"),
                  log=lines.append)
    tested = [("test_accuracy" in r) for r in history.epochs]
    assert tested == [False, True, False, True, True]                # 2, 4, and the last (5)
    assert [("test acc" in line) for line in lines] == tested
    from cnnlab.inspect import read_metrics
    assert read_metrics(tmp_path / "m.jsonl")["test_accuracy"][0] is None
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="eval_every must be a positive int"):
            fit(model, loader, optim.SGD(model.parameters(), lr=0.05), 1, eval_every=bad)
