"""``cnnlab inspect TOOL`` and ``cnnlab report``, end to end on a LeNet-5 trained for two
epochs on the embedded 8x8 digits: every picture is a real PNG of a readable size, the
report is one HTML file with every section and nothing but inlined images, and mistakes
get one clear line."""
import base64
import importlib
import io
import re
import sys

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli import main

SECTIONS = ("accuracy", "model", "curves", "filters", "maps", "attribution", "maximize", "top", "tsne", "neighbors")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    assert main(["train", "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    return out / "checkpoint.npz"


def check_png(data_or_path, least=(250, 150)):
    """A valid PNG no smaller than ``least`` and no larger than a screen or two."""
    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    with Image.open(src) as img:
        assert img.format == "PNG"
        img.verify()
        w, h = img.size
    assert least[0] <= w <= 4000 and least[1] <= h <= 4000, (w, h)
    return w, h


TOOLS = [
    ("filters", []),
    ("filters", ["--layer", "2"]),
    ("filters", ["--gradients", "--batch", "32"]),
    ("maps", ["--index", "3"]),
    ("maps", ["--layer", "1", "--layer", "4", "--channels", "0", "2"]),
    ("occlusion", ["--index", "1", "--patch", "3", "--stride", "1"]),
    ("saliency", []),
    ("saliency", ["--method", "gradient", "--target", "3"]),
    ("saliency", ["--method", "gradcam", "--layer", "1"]),
    ("maximize", ["--steps", "20"]),
    ("maximize", ["--layer", "3", "--channels", "0", "5", "--steps", "20"]),
    ("top", ["--k", "4"]),
    ("tsne", ["--samples", "60"]),
    ("tsne", ["--samples", "60", "--method", "pca"]),
    ("neighbors", ["--samples", "100", "--k", "3"]),
    ("neighbors", ["--index", "0", "7", "--k", "3"]),
    ("confusion", []),
    ("curves", []),
]


@pytest.mark.parametrize("tool, options", TOOLS, ids=[f"{t}{i}" for i, (t, _) in enumerate(TOOLS)])
def test_every_tool_writes_a_png(ckpt, tmp_path, capsys, tool, options):
    out = tmp_path / f"{tool}.png"
    assert main(["inspect", tool, str(ckpt), "--out", str(out)] + options) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    check_png(out)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]  # written atomically


def test_default_output_goes_beside_the_checkpoint(ckpt):
    assert main(["inspect", "confusion", str(ckpt)]) == 0
    check_png(ckpt.parent / "confusion.png")


def test_image_files_are_converted_to_what_the_model_takes(ckpt, tmp_path):
    # an RGB photo-sized image for a grayscale 8x8 model: converted and resized, not refused
    rgb = np.zeros((60, 100, 3), np.uint8)
    rgb[10:50, 45:55] = (255, 200, 40)
    Image.fromarray(rgb).save(tmp_path / "wide.png")
    for tool, extra in (("occlusion", []), ("saliency", ["--method", "gradcam"]), ("maps", []),
                        ("neighbors", ["--samples", "80"])):
        out = tmp_path / f"{tool}.png"
        assert main(["inspect", tool, str(ckpt), "--image", str(tmp_path / "wide.png"), "--invert",
                     "--out", str(out)] + extra) == 0
        check_png(out)


def test_report_is_one_self_contained_page(ckpt, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(ckpt), "--out", str(out), "--samples", "60"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'<section id="{section}">' in page, section
    assert "<script" not in page and "http:" not in page and "https:" not in page and "url(" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) >= 11 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.findall(r'href="(?!#)', page)  # links only within the page
    for s in sources:
        check_png(base64.b64decode(s.split(",", 1)[1]), least=(150, 100))
    assert re.search(r"Accuracy <b>\d+\.\d\d%</b>", page)
    assert re.search(r"majority of its 10 nearest neighbours is right for <b>\d+\.\d%</b> of them in the plane, "
                     r"and for <b>\d+\.\d%</b> in the feature space", page)
    assert "<td>0 (Conv2d)</td><td>6x8x8</td><td>156</td>" in page  # the model summary table
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_report_without_a_metrics_file_says_so(ckpt, tmp_path):
    out = tmp_path / "r.html"
    assert main(["report", str(ckpt), "--out", str(out), "--samples", "40", "--quiet",
                 "--metrics", str(tmp_path / "none.jsonl")]) == 0
    page = out.read_text(encoding="utf-8")
    assert "none.jsonl) was found, so there are no curves" in page


@pytest.mark.parametrize("argv, message", [
    (["maps", "--layer", "nope"], "layer 'nope' does not exist in Sequential; valid layers: 0, 1, 2, 3"),
    (["top", "--layer", "conv9"], "valid layers: 0, 1, 2"),
    (["filters", "--layer", "1"], "layer '1' is ReLU, not Conv2d; Conv2d layers: 0, 2"),
    (["saliency", "--method", "gradcam", "--layer", "7"], "Grad-CAM needs a 4-D (N, C, H, W) feature map"),
    (["saliency", "--layer", "3"], "--layer goes with --method gradcam"),
    (["top", "--channels", "99"], "channel 99 is out of range: layer '3' has 16 channels (0 to 15)"),
    (["maps", "--channels", "0", "7"], "channel 7 is out of range: layer '1' has 6 channels (0 to 5)"),
    (["maximize", "--layer", "3", "--channels", "16", "--steps", "2"], "channel 16 is out of range"),
    (["maximize", "--target", "cat"], "--target 'cat' is neither a class index nor a class name; classes: 0, 1"),
    (["occlusion", "--target", "10"], "--target 10 is out of range: the model has 10 classes (0 to 9)"),
    (["occlusion", "--index", "100000"], "--index 100000 is out of range: the test split has 359 images"),
    (["curves", "--metrics", "missing.jsonl"], "no metrics file missing.jsonl"),
    (["occlusion", "--image", "missing.png"], "missing.png: no such file"),
])
def test_mistakes_get_one_clear_line(ckpt, tmp_path, capsys, argv, message):
    tool, rest = argv[0], argv[1:]
    assert main(["inspect", tool, str(ckpt), "--out", str(tmp_path / "x.png")] + rest) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cnnlab inspect {tool}: error: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "x.png").exists()


def test_curves_need_the_metrics_file_beside_the_checkpoint(ckpt, tmp_path, capsys):
    alone = tmp_path / "alone.npz"
    alone.write_bytes(ckpt.read_bytes())
    assert main(["inspect", "curves", str(alone)]) == 2
    assert f"no metrics file {tmp_path / 'metrics.jsonl'}" in capsys.readouterr().err


def test_pictures_never_touch_pyplot_and_say_how_to_get_matplotlib(monkeypatch):
    assert "matplotlib.pyplot" not in sys.modules  # figures are made on their own Agg canvas
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.delitem(sys.modules, "cnnlab.inspect.plots", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'cnnlab\[plots\]'"):
        importlib.import_module("cnnlab.inspect.plots")
