"""Class coverage of a Fashion-MNIST generator: which of the ten classes its samples show, and how often.

A generator that draws only shoes, trousers and bags (mode collapse) can still look fine in a sample grid and
keep a moderate FID; a class histogram of its samples shows it at once. The classifier is a small CNN trained
on the training split of a data set built by ``opstylegan dataset ... --split train`` (labels are stored) and
evaluated on the test split (``--split test``), never on generated images.

    # 1. data sets (32x32, padded, with labels)
    opstylegan dataset /usr/share/datasets/fashion-mnist data/fmnist32 --resolution 32 --channels 1 --fit pad
    opstylegan dataset /usr/share/datasets/fashion-mnist data/fmnist32-test --resolution 32 --channels 1 \\
        --fit pad --split test
    # 2. the classifier (a few minutes on one CPU core); prints and stores its test accuracy
    python scripts/fmnist_coverage.py train --train data/fmnist32 --test data/fmnist32-test \\
        --out benchmarks/data/fmnist-classifier
    # 3. histograms of generated samples (and of the test split, for reference)
    python scripts/fmnist_coverage.py histogram --classifier benchmarks/data/fmnist-classifier \\
        --model fmnist32-baseline --model fmnist32-overparam --num 10000 --reference data/fmnist32-test \\
        --out coverage.json

The classifier is stored as safetensors + JSON (test accuracy, data set hashes, seed); histogram JSON holds
per model the counts, the fractions, the classes never drawn, the rarest class and the KL divergence to the
uniform distribution (Fashion-MNIST's classes are balanced, so uniform is the target).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class Classifier(nn.Module):
    """Three conv + max-pool blocks (16, 32, 64 channels; no batch norm, so eval == train behaviour), one more
    conv, global average pooling and a linear layer: ~70k parameters, trains in minutes on one CPU core.

    Input: images in [-1, 1], [N, 1, 32, 32] (the generators' output range); output: logits [N, 10].
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in (16, 32, 64):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        layers += [nn.Conv2d(64, 96, 3, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers)  # [N, 96, 4, 4]
        self.head = nn.Linear(96, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=[2, 3]))


def load_images(path: str | Path, num: int | None = None) -> torch.Tensor:
    """The first ``num`` (all: None) images of a built data set, in [-1, 1], [N, C, H, W]."""
    from opstylegan.data.dataset import ImageDataset, dataset_batches

    ds = ImageDataset(path)
    n = len(ds) if num is None else min(num, len(ds))
    return torch.cat(list(dataset_batches(ds, n, 1000))).float() / 127.5 - 1  # uint8 -> [-1, 1]


def _load_split(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, str]:
    """A built data set with labels -> (images in [-1, 1] [N, 1, H, W], labels [N], its images' sha256)."""
    from opstylegan.data.dataset import ImageDataset

    ds = ImageDataset(path)
    if ds.labels is None:
        raise SystemExit(f"{path} has no labels: build it from the IDX files with `opstylegan dataset`")
    if ds.image_shape[0] != 1:
        raise SystemExit(f"{path} has {ds.image_shape[0]} channels; the classifier takes grayscale images")
    images = load_images(path)
    labels = torch.from_numpy(np.asarray(ds.labels)).long()
    meta = json.loads((Path(path) / "dataset.json").read_text())
    return images, labels, meta.get("sha256", {}).get("images.npy", "")


def predict(model: nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Predicted classes of images in [-1, 1] [N, 1, H, W], [N]."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(images[i:i + batch]).argmax(1) for i in range(0, len(images), batch)])


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    return float((predict(model, images, batch) == labels).float().mean())


def train_classifier(train_images: torch.Tensor, train_labels: torch.Tensor, *, epochs: int = 3,
                     batch: int = 128, lr: float = 2e-3, seed: int = 0,
                     progress: Any = None) -> Classifier:
    """Adam, cosine-decayed learning rate, random 2-pixel shifts as the only augmentation."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(train_images)
    steps = epochs * math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    step = 0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            x = train_images[idx]
            dx, dy = torch.randint(-2, 3, [2], generator=gen).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = nn.functional.cross_entropy(model(x), train_labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if progress is not None:
                progress(step, steps, float(loss.detach()))
    return model.eval()


def save_classifier(model: Classifier, out: Path, info: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "classifier.json").write_text(json.dumps({"classes": list(CLASSES), **info}, indent=2) + "\n")


def load_classifier(path: str | Path) -> tuple[Classifier, dict[str, Any]]:
    path = Path(path)
    if not (path / "model.safetensors").is_file():
        raise SystemExit(f"{path} holds no classifier (model.safetensors): train one with `... train`")
    model = Classifier()
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    return model.eval(), json.loads((path / "classifier.json").read_text())


def histogram(labels: torch.Tensor, num_classes: int = 10) -> dict[str, Any]:
    """Counts, fractions, classes never seen, rarest class and KL(p || uniform) of predicted labels."""
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    total = sum(counts)
    p = [c / total for c in counts]
    kl = sum(q * math.log(q * num_classes) for q in p if q > 0)
    rare = int(np.argmin(counts))
    return {"num": total, "counts": counts, "fractions": [round(q, 4) for q in p],
            "missing": [CLASSES[i] for i, c in enumerate(counts) if c == 0],
            "rarest": {"class": CLASSES[rare], "fraction": round(p[rare], 4)}, "kl_to_uniform": round(kl, 4)}


def classify_generator(classifier: nn.Module, G: Any, num: int, *, seed: int = 0, batch: int = 250,
                       truncation_psi: float = 1.0) -> torch.Tensor:
    """Predicted classes of G's images for seeds seed .. seed + num - 1, [num]."""
    return predict(classifier, generated_images(G, num, seed=seed, batch=batch, truncation_psi=truncation_psi))


def axis_line_energy(images: torch.Tensor, min_freq: int = 6) -> float:
    """Share of the images' spectral energy that lies in thin horizontal / vertical lines: the power at the
    spatial frequencies (fx, 0) and (0, fy) with |f| >= ``min_freq`` cycles per image, divided by the power at all
    frequencies with max(|fx|, |fy|) >= ``min_freq`` (DC and low frequencies, i.e. the garment's shape, are left
    out). A straight vertical stripe pattern puts its energy on the fx axis; natural edges spread theirs.

    images: [N, 1, H, W] in [-1, 1]. Returns the ratio of the summed powers over the whole set.
    """
    x = images.float()[:, 0]
    x = x - x.mean(dim=(1, 2), keepdim=True)
    power = torch.fft.fft2(x).abs().square().sum(0)  # [H, W]
    h, w = power.shape
    fy = torch.fft.fftfreq(h, d=1 / h).abs()[:, None]  # cycles per image
    fx = torch.fft.fftfreq(w, d=1 / w).abs()[None, :]
    high = torch.maximum(fy, fx) >= min_freq
    axis = high & ((fy == 0) | (fx == 0))
    return float(power[axis].sum() / power[high].sum())


def generated_images(G: Any, num: int, *, seed: int = 0, batch: int = 250,
                     truncation_psi: float = 1.0) -> torch.Tensor:
    """G's images for seeds seed .. seed + num - 1, [num, C, H, W] in [-1, 1]."""
    out = []
    with torch.no_grad():
        for start in range(seed, seed + num, batch):
            seeds = list(range(start, min(start + batch, seed + num)))
            out.append(G(G.z_from_seeds(seeds), truncation_psi=truncation_psi).clamp(-1, 1))
    return torch.cat(out)


def _cmd_lines(args: argparse.Namespace) -> None:
    from opstylegan.cli.common import load_generator

    ref = axis_line_energy(load_images(args.reference, args.num))
    result: dict[str, Any] = {"measure": "share of high-frequency (>= 6 cycles) power on the fx / fy axes",
                              "num": args.num, "reference": {"path": str(args.reference), "axis_share": round(ref, 4)},
                              "models": {}}
    for m in args.model:
        G = load_generator(m, torch.device("cpu")).eval()
        v = axis_line_energy(generated_images(G, args.num))
        result["models"][m] = {"axis_share": round(v, 4), "vs_reference": round(v / ref, 3)}
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


def _cmd_train(args: argparse.Namespace) -> None:
    x, y, train_hash = _load_split(args.train)
    xt, yt, test_hash = _load_split(args.test)
    t0 = time.perf_counter()

    def progress(step: int, total: int, loss: float) -> None:
        if step % 100 == 0 or step == total:
            print(f"step {step}/{total} loss {loss:.4f}", file=sys.stderr, flush=True)

    model = train_classifier(x, y, epochs=args.epochs, seed=args.seed, progress=progress)
    acc = accuracy(model, xt, yt)
    info = {"test_accuracy": round(acc, 4), "num_train": len(x), "num_test": len(xt), "epochs": args.epochs,
            "seed": args.seed, "train_images_sha256": train_hash, "test_images_sha256": test_hash,
            "train_seconds": round(time.perf_counter() - t0, 1),
            "command": "python scripts/fmnist_coverage.py " + " ".join(sys.argv[1:])}
    save_classifier(model, Path(args.out), info)
    print(json.dumps(info, indent=2))


def _cmd_histogram(args: argparse.Namespace) -> None:
    from opstylegan.cli.common import load_generator

    clf, info = load_classifier(args.classifier)
    result: dict[str, Any] = {"classifier": {"path": str(args.classifier), "test_accuracy": info["test_accuracy"]},
                              "classes": list(CLASSES), "num": args.num, "seed": args.seed,
                              "truncation_psi": args.trunc, "models": {}}
    if args.reference:
        xt, _, _ = _load_split(args.reference)
        pred = predict(clf, xt)
        result["reference"] = {"path": str(args.reference), **histogram(pred)}
    for m in args.model:
        G = load_generator(m, torch.device("cpu")).eval()
        pred = classify_generator(clf, G, args.num, seed=args.seed, truncation_psi=args.trunc)
        result["models"][m] = {"fingerprint": G.fingerprint(), **histogram(pred)}
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


def _cmd_grid(args: argparse.Namespace) -> None:
    """8x8 sample grids (seeds 0-63) of several models side by side, labelled, with their class histogram."""
    from opstylegan.cli.common import load_generator
    from opstylegan.data import from_tensor, save_image
    from opstylegan.io.images_out import labelled_grid

    clf, _ = load_classifier(args.classifier)
    labels = args.label or args.model
    if len(labels) != len(args.model):
        raise SystemExit(f"{len(labels)} --label for {len(args.model)} --model")
    cells, captions = [], []
    for m in args.model:
        G = load_generator(m, torch.device("cpu")).eval()
        with torch.no_grad():
            img = G(G.z_from_seeds(list(range(64)))).clamp(-1, 1)  # [64, C, H, W]
        c, h, w = img.shape[1:]
        tile = img.view(8, 8, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, 8 * h, 8 * w)  # 8 x 8 tiles
        cells.append(from_tensor(tile[None])[0])
        hist = histogram(classify_generator(clf, G, args.num))
        captions.append(f"KL {hist['kl_to_uniform']:.2f}, rarest {hist['rarest']['fraction']:.1%}")
    save_image(args.out, labelled_grid([cells], col_labels=labels, captions=[captions]))
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the classifier on the training split, test on the test split")
    t.add_argument("--train", required=True, help="built data set of the training split (with labels)")
    t.add_argument("--test", required=True, help="built data set of the test split (with labels)")
    t.add_argument("--out", required=True, help="folder for model.safetensors + classifier.json")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--seed", type=int, default=0)
    h = sub.add_parser("histogram", help="class histogram of generated samples")
    h.add_argument("--classifier", required=True)
    h.add_argument("--model", action="append", required=True, help="model folder or shipped name (repeatable)")
    h.add_argument("--num", type=int, default=10000)
    h.add_argument("--seed", type=int, default=0, help="first seed")
    h.add_argument("--trunc", type=float, default=1.0)
    h.add_argument("--reference", help="built data set (with labels) whose predicted histogram is also shown")
    h.add_argument("--out")
    g = sub.add_parser("grid", help="8x8 sample grids of models side by side, captioned with their coverage")
    g.add_argument("--classifier", required=True)
    g.add_argument("--model", action="append", required=True)
    g.add_argument("--label", action="append", help="column label per --model (default: the model)")
    g.add_argument("--num", type=int, default=2000, help="samples for the caption's histogram")
    g.add_argument("--out", required=True, help="PNG to write")
    ln = sub.add_parser("lines", help="how much of the samples' fine detail is thin horizontal / vertical lines")
    ln.add_argument("--model", action="append", required=True)
    ln.add_argument("--reference", required=True, help="built data set (e.g. the test split) to compare with")
    ln.add_argument("--num", type=int, default=5000)
    ln.add_argument("--out")
    args = p.parse_args(argv)
    if getattr(args, "epochs", 1) < 1 or getattr(args, "num", 1) < 1:
        p.error("--epochs and --num must be >= 1")
    torch.set_num_threads(1)
    {"train": _cmd_train, "histogram": _cmd_histogram, "grid": _cmd_grid, "lines": _cmd_lines}[args.cmd](args)


if __name__ == "__main__":
    main()
