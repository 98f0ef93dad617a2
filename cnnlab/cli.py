"""The ``cnnlab`` command: train, eval, predict, summary, inspect and report.

    cnnlab train                     LeNet-5 on the embedded digits (no files, no network)
    cnnlab train --dataset mnist --data-dir DIR --model lenet5 --epochs 10
    cnnlab eval runs/mnist-lenet5/checkpoint.npz
    cnnlab predict runs/mnist-lenet5/checkpoint.npz digit.png another.jpg --top-k 3
    cnnlab summary resnet20 --input-shape 3 32 32
    cnnlab inspect occlusion runs/mnist-lenet5/checkpoint.npz --index 7 --out occlusion.png
    cnnlab report runs/mnist-lenet5/checkpoint.npz      (writes report.html beside it)
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
AUGMENTATIONS = ("auto", "none", "translate", "crop-flip")
SCHEDULES = ("constant", "step", "cosine", "onecycle")


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _number(kind, low, low_ok=True, high=None):
    """An argparse type: ``kind`` (int or float) in [low, high] (or (low, high] without low_ok)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if value < low or (value == low and not low_ok) or (high is not None and value > high):
            bound = f"{'>=' if low_ok else '>'} {low}" + (f" and <= {high}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value
    return parse


positive_int, natural = _number(int, 1), _number(int, 0)
positive_float, non_negative = _number(float, 0, low_ok=False), _number(float, 0)

# settings that may change when a run is resumed: they do not change what is computed
_RESUMABLE = {"resume", "no_progress", "no_download", "data_dir", "out", "epochs"}
_META_KEYS = {"eval": ("model", "in_shape", "num_classes", "dataset", "classes", "normalize"),
              "predict": ("model", "in_shape", "num_classes", "classes", "normalize"),
              "summary": ("model", "in_shape", "num_classes"),
              "inspect": ("model", "in_shape", "num_classes", "dataset", "classes", "normalize"),
              "report": ("model", "in_shape", "num_classes", "dataset", "classes", "normalize")}
INSPECT_TOOLS = ("filters", "maps", "occlusion", "saliency", "maximize", "top", "tsne", "neighbors", "confusion",
                 "curves")


# ----- building blocks shared by the commands -----
def _augmentation(kind, in_shape, data):
    if kind == "auto":  # small shifts for digits and clothes; crops and mirror images for photos
        kind = "crop-flip" if in_shape[0] == 3 else "translate"
    if kind == "none":
        return []
    if kind == "translate":
        return [data.RandomTranslate(max(1, in_shape[1] // 14))]
    return [data.RandomCrop(in_shape[1:], padding=4), data.RandomHorizontalFlip()]


def _load_split(args_dataset, split, data_dir, download=True):
    from cnnlab import data
    try:
        return data.load_dataset(args_dataset, split, data_dir=data_dir, download=download)
    except (OSError, ValueError, ImportError) as e:
        raise CLIError(str(e)) from None


def _model_from_meta(meta):
    from cnnlab import models
    return models.create(meta["model"], meta["in_shape"], meta["num_classes"], **meta.get("model_kwargs", {}))


def _load_for_inference(path, command):
    from cnnlab.train import CheckpointError, load_checkpoint
    try:
        ckpt = load_checkpoint(path)
        missing = [k for k in _META_KEYS[command] if k not in ckpt.meta]
        if missing:
            raise CheckpointError(f"checkpoint {path}: {command} needs to know the model's {', '.join(missing)}, "
                                  f"which this checkpoint does not record (checkpoints written by cnnlab train do)")
        model = _model_from_meta(ckpt.meta)
        model.load_state_dict(ckpt.model_state)
    except (CheckpointError, ValueError) as e:
        raise CLIError(str(e)) from None
    model.eval()
    return model, ckpt.meta


def _optimizer(args, model):
    from cnnlab import optim
    params = model.parameters()
    if args.optimizer == "sgd":
        return optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                         nesterov=args.nesterov and args.momentum > 0)
    cls = optim.Adam if args.optimizer == "adam" else optim.AdamW
    return cls(params, lr=args.lr, weight_decay=args.weight_decay)


def _scheduler(args, optimizer, steps_per_epoch):
    """Returns (scheduler, 'epoch' or 'batch')."""
    from cnnlab.optim import lr_scheduler as sched
    if args.schedule == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch), "batch"
    if args.schedule == "constant":
        main = None
    elif args.schedule == "step":
        main = sched.StepLR(optimizer, step_size=max(1, (args.epochs - args.warmup_epochs) // 3), gamma=0.1)
    else:
        main = sched.CosineAnnealingLR(optimizer, T_max=max(1, args.epochs - args.warmup_epochs))
    if not args.warmup_epochs:
        return main, "epoch"
    warm = sched.LinearLR(optimizer, start_factor=0.1, total_iters=args.warmup_epochs)
    if main is None:
        return warm, "epoch"
    return sched.SequentialLR(optimizer, [warm, main], milestones=[args.warmup_epochs]), "epoch"


# ----- commands -----
def cmd_train(args) -> int:
    import cnnlab
    from cnnlab import data, models
    from cnnlab.train import TrainingDiverged, TrainingInterrupted, fit

    if args.model not in models.MODELS:
        raise CLIError(f"unknown model {args.model!r}; choose one of {', '.join(models.MODELS)}")
    small = args.dataset == "digits"
    args.epochs = args.epochs if args.epochs is not None else (80 if small else 15)
    args.batch_size = args.batch_size if args.batch_size is not None else (32 if small else 128)
    out = args.out or os.path.join("runs", f"{args.dataset}-{args.model}")
    ckpt, metrics = os.path.join(out, "checkpoint.npz"), os.path.join(out, "metrics.jsonl")
    settings = {k: v for k, v in vars(args).items() if k not in _RESUMABLE and k != "run"}
    if args.resume:
        _check_resume(ckpt, settings, args)
    train_set = _load_split(args.dataset, "train", args.data_dir, not args.no_download)
    test_set = _load_split(args.dataset, "test", args.data_dir, not args.no_download)
    in_shape = tuple(train_set.images.shape[1:])
    num_classes = len(train_set.classes)
    mean, std = train_set.mean_std()
    normalize = data.Normalize(mean, std)
    train_tf = data.Compose(_augmentation(args.augment, in_shape, data) + [normalize])
    # drop_last: a last batch of one image would break batch norm on small feature maps
    train_loader = data.DataLoader(train_set, args.batch_size, shuffle=True, drop_last=len(train_set) > args.batch_size,
                                   transform=train_tf, seed=args.seed)
    test_loader = data.DataLoader(test_set, 500, transform=normalize)

    cnnlab.manual_seed(args.seed)
    try:
        model = models.create(args.model, in_shape, num_classes)
        optimizer = _optimizer(args, model)
        scheduler, interval = _scheduler(args, optimizer, len(train_loader))
    except ValueError as e:
        raise CLIError(str(e)) from None
    if not args.resume and os.path.exists(metrics):
        os.remove(metrics)  # a fresh run starts a fresh metrics file
    meta = {"model": args.model, "model_kwargs": {}, "in_shape": list(in_shape), "num_classes": num_classes,
            "dataset": args.dataset, "classes": list(train_set.classes),
            "normalize": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
            "settings": settings, "epochs": args.epochs}
    print(f"training {args.model} ({model.num_parameters():,} parameters) on {args.dataset}: "
          f"{len(train_set)} training and {len(test_set)} test images, {args.epochs} epochs; output in {out}")
    try:
        history = fit(model, train_loader, optimizer, args.epochs, test_loader=test_loader, scheduler=scheduler,
                      scheduler_interval=interval, loss_fn=_loss(args.label_smoothing), checkpoint_path=ckpt,
                      metrics_path=metrics, resume=args.resume, progress=not args.no_progress, meta=meta, log=print,
                      eval_every=args.eval_every)
    except TrainingDiverged as e:
        print(f"cnnlab train: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        print(f"\ncnnlab train: {e}", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from None
    if history.epochs:
        last = history.last
        total = sum(r["seconds"] for r in history.epochs)
        print(f"test accuracy {last['test_accuracy']:.4f} after {last['epoch']} epochs "
              f"({total:.1f} s of training); checkpoint {ckpt}")
    return 0


def _check_resume(ckpt, settings, args):
    """A resumed run must compute what the interrupted one would have: same model, data,
    optimisation and seed. Only the number of epochs may grow, and only where the
    learning-rate schedule does not depend on it."""
    from cnnlab.train import CheckpointError, load_checkpoint
    try:
        meta = load_checkpoint(ckpt).meta
    except CheckpointError as e:
        raise CLIError(f"cannot resume: {e}") from None
    saved = meta.get("settings", {})
    changed = [f"--{k.replace('_', '-')} {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v]
    if changed:
        raise CLIError(f"cannot resume {ckpt} with different settings ({'; '.join(changed)}); "
                       "start a new run (another --out) instead")
    if meta.get("epochs") != args.epochs and (args.schedule != "constant" or args.warmup_epochs):
        raise CLIError(f"cannot resume {ckpt} with --epochs {args.epochs}: its --schedule {args.schedule} was "
                       f"planned for {meta.get('epochs')} epochs")


def _loss(label_smoothing):
    from cnnlab import functional as F
    if not label_smoothing:
        return F.cross_entropy
    return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=label_smoothing)


def cmd_eval(args) -> int:
    from cnnlab import data
    from cnnlab.train import evaluate

    model, meta = _load_for_inference(args.checkpoint, "eval")
    dataset = _load_split(meta["dataset"], args.split, args.data_dir, not args.no_download)
    norm = meta["normalize"]
    loader = data.DataLoader(dataset, args.batch_size, transform=data.Normalize(norm["mean"], norm["std"]))
    ev = evaluate(model, loader, tta=args.tta)
    how = ", with flip test-time augmentation" if args.tta else ""
    print(f"{meta['model']} on {meta['dataset']} ({args.split}, {ev['count']} images{how}): "
          f"accuracy {ev['accuracy']:.4f}, loss {ev['loss']:.4f}")
    for name, acc in zip(meta["classes"], ev["per_class_accuracy"]):
        print(f"  {name:>12s}  {acc:.4f}")
    return 0


def _read_image(path, in_shape):
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError:
        raise CLIError("reading image files needs Pillow: pip install 'cnnlab[images]'") from None
    c, h, w = in_shape
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)  # photos taken sideways arrive upright
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit and float images: scale, do not clip
                arr = np.asarray(img, dtype=np.float64)
                top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
                img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8))
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                # strokes on a transparent background: put them on white, as on paper
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise CLIError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise CLIError(f"{path}: not a readable image ({e})") from None
    return arr[None] if c == 1 else arr.transpose(2, 0, 1)


def cmd_predict(args) -> int:
    import cnnlab
    from cnnlab import functional as F

    model, meta = _load_for_inference(args.checkpoint, "predict")
    in_shape = tuple(meta["in_shape"])
    batch = np.stack([_read_image(p, in_shape) for p in args.images])
    if args.invert:
        batch = 1.0 - batch
    mean = np.asarray(meta["normalize"]["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(meta["normalize"]["std"], np.float32).reshape(1, -1, 1, 1)
    with cnnlab.no_grad():
        probs = F.softmax(model(cnnlab.Tensor((batch - mean) / std)), dim=1).data
    k = min(args.top_k, probs.shape[1])
    for path, p in zip(args.images, probs):
        top = np.argsort(-p, kind="stable")[:k]
        print(f"{path}: " + ", ".join(f"{meta['classes'][i]} {p[i]:.4f}" for i in top))
    return 0


def cmd_summary(args) -> int:
    import cnnlab
    from cnnlab import models

    if os.path.isfile(args.model):
        model, meta = _load_for_inference(args.model, "summary")
        shape = tuple(meta["in_shape"])
    else:
        if args.model not in models.MODELS:
            raise CLIError(f"{args.model!r} is neither a checkpoint file nor a model; "
                           f"models: {', '.join(models.MODELS)}")
        shape = tuple(args.input_shape) if args.input_shape else (
            (3, 224, 224) if args.model in ("resnet50", "resnet101", "resnet152") else
            (3, 32, 32) if args.model.startswith("resnet") or args.model == "allconv" else (1, 28, 28))
        try:
            model = models.create(args.model, shape, args.num_classes)
            cnnlab.summary(model, shape)
        except ValueError as e:
            raise CLIError(str(e)) from None
        return 0
    cnnlab.summary(model, shape)
    return 0


# ----- inspect and report -----
def _subject(args, need_data: bool):
    """The checkpoint's model, its normalisation and (when ``need_data``) its test split."""
    from cnnlab.inspect.report import Subject
    model, meta = _load_for_inference(args.checkpoint, args.command)
    images = labels = None
    if need_data:
        test = _load_split(meta["dataset"], "test", args.data_dir, not args.no_download)
        images, labels = test.images, test.labels
    norm = meta["normalize"]
    return Subject(model=model, in_shape=tuple(meta["in_shape"]), classes=list(meta["classes"]),
                   mean=np.asarray(norm["mean"], np.float64), std=np.asarray(norm["std"], np.float64),
                   images=images, labels=labels, name=f"{meta['model']} on {meta['dataset']}"), meta


def _chosen_image(args, subject):
    """(display image (C, H, W) in [0, 1], its label or None): --image FILE, else test image --index N."""
    if getattr(args, "image", None):
        img = _read_image(args.image, subject.in_shape)
        return (1.0 - img if args.invert else img).astype(np.float32), None
    n = len(subject.images)
    index = args.index if args.index is not None else 0
    if index >= n:
        raise CLIError(f"--index {index} is out of range: the test split has {n} images (0 to {n - 1})")
    return subject.display(subject.images[index]), int(subject.labels[index])


def _class_index(text, classes):
    """A class given by index ('3') or by name ('Sneaker')."""
    if text in classes:
        return classes.index(text)
    try:
        k = int(text)
    except ValueError:
        raise CLIError(f"--target {text!r} is neither a class index nor a class name; classes: "
                       f"{', '.join(classes)}") from None
    if not 0 <= k < len(classes):
        raise CLIError(f"--target {k} is out of range: the model has {len(classes)} classes (0 to {len(classes) - 1})")
    return k


def _picture(args, subject):
    """The figure for ``cnnlab inspect TOOL``."""
    from cnnlab.inspect import report as R
    tool = args.tool
    if tool == "filters":
        return R.filters_figure(subject, args.layer, gradients=args.gradients, batch=args.batch)
    if tool == "confusion":
        return R.confusion_figure(subject)[0]
    if tool == "top":
        return R.top_figure(subject, args.layer, args.channels, k=args.k, limit=args.samples)
    if tool == "tsne":
        return R.embedding_figure(subject, args.samples, method=args.method, layer=args.layer)[0]
    if tool == "neighbors":
        image = _chosen_image(args, subject)[0] if args.image else None
        return R.neighbors_figure(subject, args.index, args.samples, k=args.k, layer=args.layer, image=image)
    if tool == "maximize":
        targets = None if args.target is None else [_class_index(t, subject.classes) for t in args.target]
        if targets is not None and (args.layer or args.channels):
            raise CLIError("give either --target (classes) or --layer/--channels, not both")
        return R.maximize_figure(subject, targets, args.layer, args.channels, steps=args.steps)
    image, label = _chosen_image(args, subject)
    target = None if getattr(args, "target", None) is None else _class_index(args.target, subject.classes)
    if tool == "maps":
        return R.maps_figure(subject, image, args.layer, args.channels)
    if tool == "occlusion":
        return R.occlusion_figure(subject, image, target, args.patch, args.stride, label=label)
    if args.layer and args.method != "gradcam":
        raise CLIError(f"--layer goes with --method gradcam (the {args.method} map is of the input pixels)")
    return R.saliency_figure(subject, image, args.method, target, args.layer, label=label)


def cmd_inspect(args) -> int:
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), f"{args.tool}.png")
    try:
        from cnnlab.inspect import plots
        if args.tool == "curves":
            from cnnlab.inspect.report import curves_figure
            metrics = args.metrics or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "metrics.jsonl")
            if not os.path.isfile(metrics):
                raise CLIError(f"no metrics file {metrics} (cnnlab train writes metrics.jsonl beside the checkpoint; "
                               f"give another with --metrics FILE)")
            _, meta = _load_for_inference(args.checkpoint, "summary")
            fig = curves_figure(metrics, meta.get("model"))
        else:
            need_data = args.tool != "filters" or args.gradients
            subject, _ = _subject(args, need_data)
            fig = _picture(args, subject)
        plots.save(fig, out)
    except (ValueError, ImportError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    print(f"wrote {out}")
    return 0


def cmd_report(args) -> int:
    import time

    from cnnlab._io import atomic_write_bytes
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "report.html")
    metrics = args.metrics or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "metrics.jsonl")
    start = time.perf_counter()
    try:
        from cnnlab.inspect.report import build_report
        subject, meta = _subject(args, need_data=True)
        print(f"report on {subject.name} ({len(subject.images)} test images):")
        page = build_report(subject, metrics, samples=args.samples, checkpoint=args.checkpoint, meta=meta,
                            log=None if args.quiet else print)
        atomic_write_bytes(out, page.encode("utf-8"))
    except (ValueError, ImportError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    print(f"wrote {out} ({len(page) / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    return 0


def _inspect_parsers(sub):
    def tool(name, help, description, data=True, image=False, layer=None):
        p = tools.add_parser(name, help=help, description=description)
        p.add_argument("checkpoint", help="a checkpoint.npz written by cnnlab train")
        p.add_argument("--out", metavar="FILE.png", help=f"the picture to write (default {name}.png beside the "
                                                          "checkpoint)")
        if data:
            p.add_argument("--data-dir", help="folder with the dataset files (as for eval)")
            p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing files")
        if image:
            which = p.add_mutually_exclusive_group()
            which.add_argument("--index", type=natural, metavar="N",
                               help="analyse image N of the checkpoint's test split (default 0)")
            which.add_argument("--image", metavar="FILE",
                               help="analyse an image file instead (converted to the model's channels and size)")
            p.add_argument("--invert", action="store_true", help="invert --image (dark ink on white paper -> "
                                                                  "MNIST's white on black)")
        if layer:
            p.add_argument("--layer", help=layer)
        p.set_defaults(run=cmd_inspect)
        return p

    last = "default: the last convolution's output after its ReLU"
    p = sub.add_parser("inspect", help="draw one picture of what a trained model does (TOOL --help for each)",
                       description="Draw one picture of a checkpoint's model as a PNG file. Images are taken from "
                                   "the checkpoint's test split (--index) or read from a file (--image).")
    tools = p.add_subparsers(dest="tool", required=True, metavar="TOOL")
    t = tool("filters", "convolution filters (or their gradients)",
             "The first convolution's filters, or a deeper one's as one tile per (filter, input channel).",
             layer="a Conv2d layer's name (default the first convolution); invalid names list the valid ones")
    t.add_argument("--gradients", action="store_true",
                   help="show d loss / d weight on the first --batch test images instead of the weights")
    t.add_argument("--batch", type=positive_int, default=256, help="test images for --gradients (default 256)")
    t = tool("maps", "feature maps of several layers for one image",
             "Feature maps of several layers for one image, one row per layer.", image=True)
    t.add_argument("--layer", action="append", help="a layer to show (repeat for several; default up to 6 "
                                                    "activation and pooling layers)")
    t.add_argument("--channel", "--channels", dest="channels", type=natural, nargs="+", metavar="C",
                   help="channels to show in every row (default the first 16)")
    t = tool("occlusion", "occlusion sensitivity of one image",
             "Hide a square patch at every position and map how much the class's probability drops.", image=True)
    t.add_argument("--target", help="the class to explain, by index or name (default the predicted one)")
    t.add_argument("--patch", type=positive_int, help="side of the hidden square in pixels (default 1/5 of the image)")
    t.add_argument("--stride", type=positive_int, help="step between squares (default a third of --patch)")
    t = tool("saliency", "gradient saliency, SmoothGrad or Grad-CAM of one image",
             "Which pixels the class's score is most sensitive to.", image=True,
             layer=f"the layer for --method gradcam ({last})")
    t.add_argument("--method", default="smoothgrad", choices=("smoothgrad", "gradient", "gradcam"),
                   help="smoothgrad (default): gradients averaged over noisy copies; gradient: one gradient; "
                        "gradcam: Grad-CAM on --layer")
    t.add_argument("--target", help="the class to explain, by index or name (default the predicted one)")
    t = tool("maximize", "images synthesised to excite a class or channels",
             "Gradient ascent on the input: images that maximise each class's score, or channels of a layer.",
             layer=f"maximise channels of this layer instead of classes ({last} when only --channels is given)")
    t.add_argument("--target", nargs="+", metavar="CLASS", help="classes, by index or name (default all)")
    t.add_argument("--channel", "--channels", dest="channels", type=natural, nargs="+", metavar="C",
                   help="channels of --layer (default its first 8)")
    t.add_argument("--steps", type=positive_int, default=200, help="gradient-ascent steps (default 200)")
    t = tool("top", "test images that excite channels most, with receptive fields",
             "The k test images whose largest activation in each channel is highest, with the receptive field "
             "of the unit that fired boxed, and the patches it saw.", layer=f"the layer ({last})")
    t.add_argument("--channel", "--channels", dest="channels", type=natural, nargs="+", metavar="C",
                   help="channels to show (default the 4 whose top images excite them most)")
    t.add_argument("--k", type=positive_int, default=9, help="images per channel (default 9)")
    t.add_argument("--samples", type=positive_int, help="search the first N test images (default all)")
    t = tool("tsne", "t-SNE (or PCA) of the feature space, coloured by class",
             "The penultimate features of test images placed in a plane, with their 10-NN accuracy.",
             layer="use this layer's output as the features (default the last linear layer's input)")
    t.add_argument("--samples", type=_number(int, 20), default=1000,
                   help="test images, drawn at random (default 1000, at least 20)")
    t.add_argument("--method", default="tsne", choices=("tsne", "pca"), help="default tsne")
    t = tool("neighbors", "nearest neighbours in feature space beside pixel space",
             "The nearest test images to a few queries, by feature vectors and by pixels.",
             layer="use this layer's output as the features (default the last linear layer's input)")
    which = t.add_mutually_exclusive_group()
    which.add_argument("--index", type=natural, nargs="+", metavar="N",
                       help="query test images (default 5 of different classes)")
    which.add_argument("--image", metavar="FILE", help="query with an image file instead")
    t.add_argument("--invert", action="store_true", help="invert --image")
    t.add_argument("--samples", type=positive_int, help="search N test images drawn at random (default all)")
    t.add_argument("--k", type=positive_int, default=6, help="neighbours per query (default 6)")
    tool("confusion", "confusion matrix on the test split", "Counts and row-normalised rates on the test split.")
    t = tool("curves", "training curves from the metrics file", "Loss, accuracy and learning rate per epoch.",
             data=False)
    t.add_argument("--metrics", metavar="FILE", help="the metrics file (default metrics.jsonl beside the checkpoint)")

    p = sub.add_parser("report", help="write one self-contained HTML page with every picture of a model",
                       description="Accuracy, confusion matrix, model summary, training curves, filters, feature "
                                   "maps, occlusion/saliency/Grad-CAM, activation maximisation, top activations, "
                                   "t-SNE and nearest neighbours, in one HTML file with the images inside it.")
    p.add_argument("checkpoint", help="a checkpoint.npz written by cnnlab train")
    p.add_argument("--out", metavar="FILE.html", help="default report.html beside the checkpoint")
    p.add_argument("--data-dir", help="folder with the dataset files (as for eval)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing files")
    p.add_argument("--samples", type=_number(int, 20), default=1000,
                   help="test images (drawn at random) for t-SNE and nearest neighbours (default 1000)")
    p.add_argument("--metrics", metavar="FILE", help="the metrics file (default metrics.jsonl beside the checkpoint)")
    p.add_argument("--quiet", action="store_true", help="do not print each step's time")
    p.set_defaults(run=cmd_report)


def _threads_option(p) -> None:
    p.add_argument("--threads", type=positive_int, default=None,
                   help="threads for cnnlab's kernels (default: the CPU count, or OMP_NUM_THREADS if set); "
                        "the same seed and thread count give bit-identical results")


def build_parser() -> argparse.ArgumentParser:
    from cnnlab.models import MODELS

    parser = argparse.ArgumentParser(
        prog="cnnlab", description="Convolutional neural networks on NumPy: train, evaluate, predict, inspect.",
        epilog="Results are reproducible for a given --seed, --threads and number of BLAS threads "
               "(OMP_NUM_THREADS).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model on a dataset (default: LeNet-5 on the embedded digits)",
                       description="Train a zoo model; writes OUT/checkpoint.npz (every epoch) and OUT/metrics.jsonl.")
    p.add_argument("--model", default="lenet5", help=f"architecture: {', '.join(MODELS)} (default lenet5)")
    p.add_argument("--dataset", default="digits", choices=DATASETS,
                   help="digits is scikit-learn's embedded 8x8 digits, needing no files (default digits)")
    p.add_argument("--data-dir", help="folder with the original dataset files (else $CNNLAB_DATA, then the "
                                      "cache folder; missing files are downloaded)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing files")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 80 for digits, 15 otherwise)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="batch size (default 32 for digits, 128 otherwise)")
    p.add_argument("--optimizer", default="adamw", choices=("sgd", "adam", "adamw"), help="default adamw")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="learning rate (peak rate for onecycle; default 2e-3)")
    p.add_argument("--momentum", type=non_negative, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum for SGD")
    p.add_argument("--weight-decay", type=non_negative, default=5e-4, help="weight decay (default 5e-4)")
    p.add_argument("--schedule", default="cosine", choices=SCHEDULES, help="learning-rate schedule (default cosine)")
    p.add_argument("--warmup-epochs", type=natural, default=0, help="linear warm-up epochs before the schedule")
    p.add_argument("--augment", default="auto", choices=AUGMENTATIONS,
                   help="translate: random shifts of up to 1/14 of the width; crop-flip: random crop with padding 4 "
                        "and horizontal flip; auto (default): crop-flip for colour images, translate otherwise")
    p.add_argument("--label-smoothing", type=_number(float, 0, high=1), default=0.1, help="cross-entropy label smoothing (default 0.1)")
    p.add_argument("--seed", type=natural, default=0, help="seed for initialisation, shuffling, augmentation, dropout")
    p.add_argument("--eval-every", type=positive_int, default=1, metavar="N",
                   help="evaluate the test set after every N-th epoch and after the last (default 1)")
    p.add_argument("--out", help="output folder (default runs/DATASET-MODEL)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch only)")
    _threads_option(p)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on its dataset's test split",
                       description="Loss, accuracy and per-class accuracy of a checkpoint.")
    p.add_argument("checkpoint", help="a checkpoint.npz written by cnnlab train")
    p.add_argument("--data-dir", help="folder with the dataset files")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing files")
    p.add_argument("--split", default="test", choices=("train", "test"), help="default test")
    p.add_argument("--batch-size", type=positive_int, default=500, help="default 500")
    p.add_argument("--tta", choices=("flip",), default=None,
                   help="test-time augmentation: flip averages the class probabilities of each image and its "
                        "mirror image (for models trained with flips, e.g. --augment crop-flip)")
    _threads_option(p)
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("predict", help="classify image files with a checkpoint",
                       description="Top-k classes of PNG/JPEG images; any size or mode is converted to what the "
                                   "model takes (grayscale or RGB, resized to its input size).")
    p.add_argument("checkpoint", help="a checkpoint.npz written by cnnlab train")
    p.add_argument("images", nargs="+", help="one or more image files")
    p.add_argument("--top-k", type=positive_int, default=3, help="classes to show per image (default 3)")
    p.add_argument("--invert", action="store_true",
                   help="invert intensities (dark digits on white paper -> MNIST's white on black)")
    p.set_defaults(run=cmd_predict)

    p = sub.add_parser("summary", help="layers, shapes, parameters, mult-adds and receptive fields",
                       description="Summary of a zoo model or of a checkpoint's model.")
    p.add_argument("model", help=f"a checkpoint file or a model name ({', '.join(MODELS)})")
    p.add_argument("--input-shape", type=positive_int, nargs=3, metavar=("C", "H", "W"),
                   help="input shape (default: 1 28 28, or 3 32 32 for CIFAR models, 3 224 224 for ResNet-50+)")
    p.add_argument("--num-classes", type=positive_int, default=10, help="default 10")
    p.set_defaults(run=cmd_summary)

    _inspect_parsers(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        from cnnlab.kernels.parallel import set_num_threads
        set_num_threads(args.threads)
    try:
        return args.run(args)
    except CLIError as e:
        command = " ".join([args.command] + ([args.tool] if getattr(args, "tool", None) else []))
        print(f"cnnlab {command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
