"""The cnnlab command, end to end on the embedded digits and on a few image files."""
import numpy as np
import pytest
from PIL import Image

from cnnlab.cli import build_parser, main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--epochs", "3", "--out", str(out), "--no-progress", "--seed", "1"]) == 0
    return out


def test_train_writes_checkpoint_and_metrics_and_learns(trained, capsys):
    lines = (trained / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert (trained / "checkpoint.npz").exists()
    assert main(["eval", str(trained / "checkpoint.npz")]) == 0
    out = capsys.readouterr().out
    acc = float(out.split("accuracy ")[1].split(",")[0])
    assert acc > 0.8  # three epochs on the digits already classify most of them
    assert out.count("\n") >= 11  # one line per class
    assert main(["eval", str(trained / "checkpoint.npz"), "--tta", "flip"]) == 0
    assert "with flip test-time augmentation" in capsys.readouterr().out


def test_train_resume_continues_to_more_epochs(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["train", "--epochs", "1", "--out", out, "--no-progress", "--schedule", "constant"]) == 0
    assert main(["train", "--epochs", "2", "--out", out, "--no-progress", "--resume", "--schedule", "constant"]) == 0
    assert "resuming from" in capsys.readouterr().out
    # what would change the computation cannot change on resume
    assert main(["train", "--epochs", "3", "--out", out, "--resume", "--schedule", "constant", "--lr", "0.1"]) == 2
    assert "--lr 0.002 -> 0.1" in capsys.readouterr().err
    assert main(["train", "--epochs", "3", "--out", out, "--resume"]) == 2  # cosine is planned for a fixed length
    assert "--schedule" in capsys.readouterr().err
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 2


def test_threads_option_sets_cnnlab_threads_and_same_threads_repeat_exactly(tmp_path):
    from cnnlab.kernels import parallel
    saved = parallel.get_num_threads()
    try:
        weights = []
        for run in ("a", "b"):
            out = tmp_path / run
            assert main(["train", "--epochs", "1", "--out", str(out), "--no-progress", "--threads", "2"]) == 0
            assert parallel.get_num_threads() == 2
            with np.load(out / "checkpoint.npz") as ckpt:
                weights.append({k: ckpt[k] for k in ckpt.files if k.startswith("model/")})
        assert weights[0].keys() and all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])
    finally:
        parallel.set_num_threads(saved)
    with pytest.raises(SystemExit):
        main(["train", "--threads", "0"])


def write_image(path, size, mode, value=255):
    arr = np.zeros(size[::-1] + ((3,) if mode == "RGB" else ()), np.uint8)
    arr[size[1] // 4: 3 * size[1] // 4, size[0] // 2 - 1: size[0] // 2 + 1] = value  # a vertical stroke: a "1"
    Image.fromarray(arr, mode=mode).save(path)


def test_predict_several_images_any_size_or_mode(trained, tmp_path, capsys):
    files = [tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "c.png"]
    write_image(files[0], (8, 8), "L")
    write_image(files[1], (40, 30), "RGB")
    write_image(files[2], (100, 100), "L")
    assert main(["predict", str(trained / "checkpoint.npz"), *map(str, files), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for f, line in zip(files, lines):
        assert line.startswith(str(f))
        probs = [float(tok) for tok in line.split(": ", 1)[1].replace(",", "").split()[1::2]]
        assert len(probs) == 2 and probs[0] >= probs[1] and 0 < sum(probs) <= 1 + 1e-6


def test_summary_of_model_and_checkpoint(trained, capsys):
    assert main(["summary", "lenet5"]) == 0
    assert "Total params: 61,706" in capsys.readouterr().out
    assert main(["summary", "resnet20"]) == 0
    assert "Total params: 269,722" in capsys.readouterr().out
    assert main(["summary", str(trained / "checkpoint.npz")]) == 0
    assert "Input shape: 1x8x8" in capsys.readouterr().out


def test_bad_input_gives_clear_errors(trained, tmp_path, capsys):
    ckpt = str(trained / "checkpoint.npz")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert main(["predict", ckpt, str(text)]) == 2
    assert f"{text}: not a readable image" in capsys.readouterr().err
    assert main(["predict", ckpt, str(tmp_path / "missing.png")]) == 2
    assert "missing.png: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # predict needs at least one image
        main(["predict", ckpt])
    assert e.value.code == 2
    assert "the following arguments are required: images" in capsys.readouterr().err
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"junk")
    assert main(["eval", str(junk)]) == 2
    assert "not a cnnlab checkpoint" in capsys.readouterr().err
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--no-download", "--epochs", "1"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["train", "--model", "alexnet", "--epochs", "1"]) == 2
    assert "unknown model 'alexnet'" in capsys.readouterr().err
    assert main(["summary", "nonsense"]) == 2
    assert "neither a checkpoint file nor a model" in capsys.readouterr().err
    assert main(["summary", "mnist_cnn", "--input-shape", "1", "8", "8"]) == 2
    assert "mnist_cnn: needs inputs of at least 10x10 pixels, got 8x8" in capsys.readouterr().err
    for bad in (["train", "--lr", "-1"], ["train", "--epochs", "0"], ["predict", ckpt, "x.png", "--top-k", "0"],
                ["train", "--label-smoothing", "2"]):
        with pytest.raises(SystemExit) as e:
            main(bad)
        assert e.value.code == 2
        assert "must be" in capsys.readouterr().err


def test_predict_reads_transparent_and_16_bit_images(trained, tmp_path, capsys):
    # black strokes on a transparent background, and a 16-bit grayscale image
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[2:6, 3:5, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    from cnnlab.cli import _read_image
    arr = _read_image(tmp_path / "t.png", (1, 8, 8))
    assert arr[0, 0, 0] == 1.0 and arr[0, 3, 3] == 0.0  # white paper, black ink
    deep = (np.full((8, 8), 30000, np.uint16))
    Image.fromarray(deep).save(tmp_path / "d.png")
    assert abs(_read_image(tmp_path / "d.png", (1, 8, 8)).mean() - 30000 / 65535) < 0.01
    assert main(["predict", str(trained / "checkpoint.npz"), str(tmp_path / "t.png"), str(tmp_path / "d.png")]) == 0


def test_help_describes_every_option():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices
    assert set(sub) == {"train", "eval", "predict", "summary", "inspect", "report"}
    tools = sub["inspect"]._subparsers._group_actions[0].choices
    assert set(tools) == {"filters", "maps", "occlusion", "saliency", "maximize", "top", "tsne", "neighbors",
                          "confusion", "curves"}
    commands = {name: p for name, p in sub.items() if name != "inspect"}
    commands.update({f"inspect {name}": p for name, p in tools.items()})
    for name, p in commands.items():
        text = p.format_help()
        for action in p._actions:
            for opt in action.option_strings:
                assert opt in text
            if action.dest != "help":
                assert action.help, f"{name} {action.dest} has no help"


def test_train_eval_every(tmp_path, capsys):
    out = tmp_path / "e"
    assert main(["train", "--epochs", "3", "--eval-every", "2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert [("test acc" in line) for line in printed.splitlines() if line.startswith("epoch ")] == [False, True, True]
    assert "test accuracy" in printed.splitlines()[-1]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--eval-every", "0"])
