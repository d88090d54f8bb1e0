"""Image I/O, IDX files, dataset building, ImageDataset and InfiniteSampler (tiny synthetic files)."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from opstylegan.data import (
    DatasetError,
    IDXError,
    ImageDataset,
    ImageError,
    InfiniteSampler,
    build_dataset,
    center_crop_resize,
    from_tensor,
    list_images,
    load_image,
    make_grid,
    open_dataset,
    read_idx,
    read_metadata,
    save_grid,
    save_image,
    to_tensor,
    write_idx,
)

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# load_image


def test_load_rgb_png_and_jpeg_and_channel_conversion(tmp_path: Path) -> None:
    a = _rgb(6, 5)
    Image.fromarray(a).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (6, 5, 3)
    np.testing.assert_array_equal(out, a)
    gray = load_image(tmp_path / "a.png", channels=1)
    np.testing.assert_array_equal(gray[:, :, 0], np.asarray(Image.fromarray(a).convert("L")))
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=95)
    assert load_image(tmp_path / "a.jpg").shape == (6, 5, 3)
    # Bytes in, same pixels out.
    np.testing.assert_array_equal(load_image((tmp_path / "a.png").read_bytes()), a)


def test_load_grayscale_modes() -> None:
    g = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    out = load_image(_png_bytes(Image.fromarray(g, "L")))
    assert out.shape == (4, 5, 1)
    np.testing.assert_array_equal(out[:, :, 0], g)
    rgb = load_image(_png_bytes(Image.fromarray(g, "L")), channels=3)
    assert rgb.shape == (4, 5, 3) and (rgb == g[:, :, None]).all()
    bilevel = load_image(_png_bytes(Image.fromarray(g > 100).convert("1")))
    np.testing.assert_array_equal(bilevel[:, :, 0], np.where(g > 100, 255, 0))


def test_load_16bit_scales_to_8bit() -> None:
    v = np.array([[0, 257, 257 * 100], [257 * 200, 65535, 128]], dtype=np.uint16)
    img = Image.fromarray(v)
    assert img.mode.startswith("I;16")
    out = load_image(_png_bytes(img))
    assert out.shape == (2, 3, 1)
    np.testing.assert_array_equal(out[:, :, 0], [[0, 1, 100], [200, 255, 0]])


def test_alpha_is_composited_on_black() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = [200, 100, 50]
    rgba[..., 3] = [[255, 0], [128, 51]]
    out = load_image(_png_bytes(Image.fromarray(rgba, "RGBA")))
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[0, 0], [200, 100, 50])
    np.testing.assert_array_equal(out[0, 1], [0, 0, 0])
    np.testing.assert_array_equal(out[1, 0], [100, 50, 25])  # round(x * 128 / 255)
    np.testing.assert_array_equal(out[1, 1], [40, 20, 10])
    la = np.stack([np.full((2, 2), 200, np.uint8), rgba[..., 3]], axis=-1)
    out_la = load_image(_png_bytes(Image.fromarray(la, "LA")))
    assert out_la.shape == (2, 2, 1)
    np.testing.assert_array_equal(out_la[:, :, 0], [[200, 0], [100, 40]])


def test_palette_with_and_without_transparency() -> None:
    p = Image.new("P", (3, 2))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putdata([0, 1, 0, 1, 0, 1])
    out = load_image(_png_bytes(p))
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [0, 255, 0])
    out_t = load_image(_png_bytes(p, transparency=1))  # palette entry 1 is transparent
    np.testing.assert_array_equal(out_t[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out_t[0, 1], [0, 0, 0])


def test_cmyk_jpeg_loads_as_rgb() -> None:
    buf = io.BytesIO()
    Image.new("CMYK", (4, 3), (0, 255, 255, 0)).save(buf, format="JPEG", quality=100)
    out = load_image(buf.getvalue())
    assert out.shape == (3, 4, 3)
    assert out[..., 0].min() > 230 and out[..., 1:].max() < 25  # pure red


def test_exif_orientation_is_applied() -> None:
    a = np.zeros((2, 4, 3), dtype=np.uint8)
    a[0, 0] = 255  # white top-left corner of a 4 wide x 2 high image
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif)
    out = load_image(buf.getvalue())
    assert out.shape == (4, 2, 3)
    assert out[0, 1].tolist() == [255, 255, 255] and out.sum() == 255 * 3


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"hello, I am text pretending to be an image\n", "not a recognised image"),
    ],
)
def test_unreadable_files_raise_image_error(tmp_path: Path, content: bytes, reason: str) -> None:
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=reason) as ei:
        load_image(p)
    assert ei.value.path == str(p)
    assert isinstance(ei.value, ValueError)


def test_truncated_and_corrupt_png_raise_image_error(tmp_path: Path) -> None:
    full = _png_bytes(Image.fromarray(_rgb(64, 64)))
    (tmp_path / "trunc.png").write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "trunc.png")
    corrupt = bytearray(full)
    corrupt[60:400] = bytes(340)  # zero out the start of the compressed data
    (tmp_path / "corrupt.png").write_bytes(bytes(corrupt))
    with pytest.raises(ImageError, match="corrupt"):
        load_image(tmp_path / "corrupt.png")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_load_image_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ValueError, match="channels must be None, 1 or 3, got 2"):
        load_image(b"x", channels=2)


# --------------------------------------------------------------------------------------------------
# crop / resize / save / tensors


def test_center_crop_resize() -> None:
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, 10:30] = 200  # the central 20x20 square
    out = center_crop_resize(img, 16)
    assert out.shape == (16, 16, 3)
    assert out.min() >= 190  # only the central square survives the crop
    same = center_crop_resize(img[:, 10:30], 20)
    np.testing.assert_array_equal(same, img[:, 10:30])
    with pytest.raises(ImageError, match="too small: 40x20 px, needs at least 32x32"):
        center_crop_resize(img, 32, name="small.png")
    assert center_crop_resize(img, 32, allow_upscale=True).shape == (32, 32, 3)
    g = center_crop_resize(img[:, :, :1], 16)
    assert g.shape == (16, 16, 1)


def test_save_image_roundtrip_and_atomicity(tmp_path: Path) -> None:
    a = _rgb(7, 9)
    p = tmp_path / "sub" / "x.png"
    save_image(p, a)
    np.testing.assert_array_equal(load_image(p), a)
    save_image(p, a[:, :, :1])  # overwrite in place with a grayscale image
    np.testing.assert_array_equal(load_image(p), a[:, :, :1])
    assert sorted(f.name for f in p.parent.iterdir()) == ["x.png"]  # no temp files left
    with pytest.raises(ValueError, match="unknown image extension '.xyz'"):
        save_image(tmp_path / "x.xyz", a)


def test_tensor_roundtrip_is_exact() -> None:
    a = np.random.default_rng(1).integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)
    x = to_tensor(a)
    assert x.shape == (3, 3, 5, 4) and x.dtype == torch.float32
    assert to_tensor(np.array([[[0, 255]]], dtype=np.uint8).reshape(1, 2, 1)).flatten().tolist() == [-1.0, 1.0]
    np.testing.assert_array_equal(from_tensor(x), a)
    chw = torch.from_numpy(a[0]).permute(2, 0, 1)  # [H, W, C] -> [C, H, W]
    torch.testing.assert_close(to_tensor(chw), x[:1])
    np.testing.assert_array_equal(from_tensor(torch.tensor([[[-3.0, 3.0]]])), [[[[0], [255]]]])


def test_grid_layout(tmp_path: Path) -> None:
    imgs = np.stack([np.full((2, 3, 3), 10 * (i + 1), np.uint8) for i in range(3)])
    grid = make_grid(imgs, ncols=2, padding=1)
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 3)
    assert grid[1, 1, 0] == 10 and grid[1, 5, 0] == 20 and grid[4, 1, 0] == 30 and grid[4, 5, 0] == 0
    save_grid(tmp_path / "g.png", to_tensor(imgs), ncols=2, padding=1)
    np.testing.assert_array_equal(load_image(tmp_path / "g.png"), grid)


def test_list_images_folder_zip_file(tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    (d / "b" / "c").mkdir(parents=True)
    (d / ".hidden").mkdir()
    for name in ["z.png", "b/a.JPG", "b/c/m.webp", ".hidden/h.png", ".dot.png", "notes.txt"]:
        (d / name).write_bytes(b"x")
    assert list_images(d) == ["b/a.JPG", "b/c/m.webp", "z.png"]
    z = tmp_path / "imgs.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for name in ["q/2.png", "q/1.png", "__MACOSX/q/._1.png", "readme.md"]:
            zf.writestr(name, b"x")
    assert list_images(z) == ["q/1.png", "q/2.png"]
    assert list_images(d / "z.png") == ["z.png"]


# --------------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("compress", [False, True])
def test_idx_roundtrip(tmp_path: Path, compress: bool) -> None:
    a = np.random.default_rng(2).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    p = tmp_path / ("train-images-idx3-ubyte" + (".gz" if compress else ""))
    write_idx(p, a, compress=compress)
    np.testing.assert_array_equal(read_idx(p), a)
    p.write_bytes(p.read_bytes()[:-3] if not compress else b"\x00\x00\x0d\x03")
    with pytest.raises(IDXError, match=p.name):
        read_idx(p)


def _write_mnist(folder: Path, n: int = 6, *, compress: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    gz = ".gz" if compress else ""
    write_idx(folder / f"t10k-images-idx3-ubyte{gz}", imgs, compress=compress)
    write_idx(folder / f"t10k-labels-idx1-ubyte{gz}", labels, compress=compress)
    write_idx(folder / f"train-images-idx3-ubyte{gz}", imgs[:2], compress=compress)
    return imgs, labels


@pytest.mark.parametrize("compress", [False, True])
def test_build_from_idx_pad_keeps_exact_pixels(tmp_path: Path, compress: bool) -> None:
    src = tmp_path / "mnist"
    src.mkdir()
    imgs, labels = _write_mnist(src, compress=compress)
    rep = build_dataset(src, tmp_path / "out", resolution=32, channels=1, split="test", fit="pad")
    assert rep.count == 6 and rep.source_kind == "idx" and rep.has_labels
    out = np.load(tmp_path / "out" / "images.npy", mmap_mode="r", allow_pickle=False)
    assert out.shape == (6, 1, 32, 32)
    np.testing.assert_array_equal(out[:, 0, 2:30, 2:30], imgs)
    assert out[:, :, :2].max() == 0 and out[:, :, :, 30:].max() == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "labels.npy"), labels)
    # Default split is train (2 images, no labels file beside it); default fit resizes.
    rep2 = build_dataset(src, tmp_path / "out2", resolution=16, channels=3)
    assert rep2.count == 2 and not rep2.has_labels
    assert np.load(tmp_path / "out2" / "images.npy").shape == (2, 3, 16, 16)
    # A single IDX file works as a source too.
    f = next(src.glob("t10k-images*"))
    assert build_dataset(f, tmp_path / "out3", resolution=32, channels=1, max_images=3).count == 3


# --------------------------------------------------------------------------------------------------
# build_dataset


def _messy_folder(root: Path) -> dict[str, str]:
    """Good images in nested folders plus one of each kind of bad file; returns bad name -> reason."""
    (root / "00000").mkdir(parents=True)
    (root / "01000").mkdir()
    Image.fromarray(_rgb(40, 48, 1)).save(root / "00000" / "a.png")
    Image.fromarray(_rgb(32, 32, 2)).save(root / "00000" / "b.jpg", quality=95)
    Image.fromarray(_rgb(64, 64, 3)[:, :, 0], "L").save(root / "01000" / "c.png")
    full = _png_bytes(Image.fromarray(_rgb(64, 64, 4)))
    (root / "01000" / "d_truncated.png").write_bytes(full[: len(full) // 2])
    (root / "01000" / "e_empty.png").write_bytes(b"")
    (root / "01000" / "f_text.png").write_text("not an image")
    (root / "01000" / "g_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))
    Image.fromarray(_rgb(8, 8, 5)).save(root / "01000" / "h_small.png")
    return {"d_truncated.png": "truncated", "e_empty.png": "empty", "f_text.png": "not a recognised image",
            "g_corrupt.jpg": "", "h_small.png": "too small"}


def test_build_from_folder_reports_bad_files(tmp_path: Path) -> None:
    bad = _messy_folder(tmp_path / "src")
    calls: list[tuple[int, int]] = []
    rep = build_dataset(tmp_path / "src", tmp_path / "ds", resolution=32, channels=3,
                        progress=lambda d, t: calls.append((d, t)))
    assert rep.count == 3 and rep.num_candidates == 8 and rep.num_skipped == 5
    assert calls[-1] == (8, 8) and len(calls) == 8
    by_name = {Path(s.name).name: s.reason for s in rep.skipped}
    assert set(by_name) == set(bad)
    for name, reason in bad.items():
        assert reason in by_name[name], (name, by_name[name])
    meta = read_metadata(tmp_path / "ds")
    assert meta["count"] == 3 and meta["num_skipped"] == 5 and len(meta["skipped"]) == 5
    arr = np.load(tmp_path / "ds" / "images.npy", mmap_mode="r", allow_pickle=False)
    assert arr.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(arr[1], load_image(tmp_path / "src/00000/b.jpg").transpose(2, 0, 1))
    assert meta["sha256"]["images.npy"] == hashlib.sha256((tmp_path / "ds" / "images.npy").read_bytes()).hexdigest()
    # Upscaling is opt-in: the 8 px image is then kept.
    rep_up = build_dataset(tmp_path / "src", tmp_path / "ds_up", resolution=32, channels=3, allow_upscale=True)
    assert rep_up.count == 4


def test_build_on_error_fail_names_the_file_and_leaves_nothing(tmp_path: Path) -> None:
    _messy_folder(tmp_path / "src")
    with pytest.raises(ImageError, match="d_truncated.png") as ei:
        build_dataset(tmp_path / "src", tmp_path / "ds", resolution=32, channels=3, on_error="fail")
    assert "truncated" in ei.value.reason
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_build_is_atomic_on_interrupt(tmp_path: Path) -> None:
    _messy_folder(tmp_path / "src")

    def boom(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_dataset(tmp_path / "src", tmp_path / "ds", resolution=32, channels=3, progress=boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_build_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    _messy_folder(tmp_path / "src")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "keep.txt").write_text("precious")
    with pytest.raises(DatasetError, match="not empty; pass overwrite=True"):
        build_dataset(tmp_path / "src", tmp_path / "ds", resolution=16, channels=1)
    # overwrite replaces a dataset, never a folder that is not one
    with pytest.raises(DatasetError, match="is not a dataset built by opstylegan .* not replaced, even with overwrite"):
        build_dataset(tmp_path / "src", tmp_path / "ds", resolution=16, channels=1, overwrite=True)
    assert (tmp_path / "ds" / "keep.txt").read_text() == "precious"
    (tmp_path / "ds" / "keep.txt").unlink()
    build_dataset(tmp_path / "src", tmp_path / "ds", resolution=32, channels=1)
    rep = build_dataset(tmp_path / "src", tmp_path / "ds", resolution=16, channels=1, overwrite=True)
    assert rep.count == 3 and ImageDataset(tmp_path / "ds").resolution == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src"]
    (tmp_path / "empty").mkdir()  # an empty destination folder is fine without overwrite
    assert build_dataset(tmp_path / "src", tmp_path / "empty", resolution=16, channels=1).count == 3
    with pytest.raises(DatasetError, match="would replace the source"):
        build_dataset(tmp_path / "src", tmp_path, resolution=16, channels=1, overwrite=True)


def test_build_zip_max_images_and_argument_errors(tmp_path: Path) -> None:
    z = tmp_path / "imgs.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("x/0_broken.png", b"garbage")  # sorts between 0.png and 1.png
        for i in range(4):
            zf.writestr(f"x/{i}.png", _png_bytes(Image.fromarray(_rgb(20, 20, i))))
    rep = build_dataset(z, tmp_path / "ds", resolution=16, channels=3, max_images=3)
    assert rep.count == 3 and rep.num_skipped == 1 and rep.skipped[0].name == "imgs.zip:x/0_broken.png"
    ds = ImageDataset(tmp_path / "ds")
    assert len(ds) == 3 and ds.image_shape == [3, 16, 16]
    # All files bad: an error, and no dataset.
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("a.png", b"")
    with pytest.raises(DatasetError, match="no usable images"):
        build_dataset(tmp_path / "bad.zip", tmp_path / "ds_bad", resolution=16, channels=3)
    assert not (tmp_path / "ds_bad").exists()
    for kw, msg in [({"resolution": 24}, "power of two"), ({"resolution": 8}, "power of two"),
                    ({"channels": 2}, "channels must be 1 or 3, got 2"), ({"on_error": "ignore"}, "on_error"),
                    ({"fit": "stretch"}, "fit must be"), ({"max_images": 0}, "max_images")]:
        args = {"resolution": 16, "channels": 3, **kw}
        with pytest.raises(ValueError, match=msg):
            build_dataset(z, tmp_path / "x", **args)
    with pytest.raises(FileNotFoundError):
        build_dataset(tmp_path / "missing", tmp_path / "x", resolution=16, channels=3)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match="unsupported source"):
        build_dataset(tmp_path / "notes.txt", tmp_path / "x", resolution=16, channels=3)


# --------------------------------------------------------------------------------------------------
# ImageDataset


def test_dataset_dir_roundtrip_xflip_and_subset(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    imgs = [_rgb(16, 16, i) for i in range(5)]
    for i, a in enumerate(imgs):
        Image.fromarray(a).save(src / f"{i}.png")
    build_dataset(src, tmp_path / "ds", resolution=16, channels=3)
    ds = open_dataset(tmp_path / "ds")
    assert (len(ds), ds.resolution, ds.num_channels, ds.kind) == (5, 16, 3, "dataset")
    for i, a in enumerate(imgs):
        item = ds[i]
        assert item.dtype == torch.uint8 and item.shape == (3, 16, 16)
        np.testing.assert_array_equal(item.numpy(), a.transpose(2, 0, 1))
    flipped = ImageDataset(tmp_path / "ds", xflip=True)
    assert len(flipped) == 10
    torch.testing.assert_close(flipped[7], ds[2].flip(-1))
    torch.testing.assert_close(flipped[2], ds[2])
    sub = ImageDataset(tmp_path / "ds", max_size=3, seed=4)
    again = ImageDataset(tmp_path / "ds", max_size=3, seed=4)
    assert len(sub) == 3 and [sub.image_name(i) for i in range(3)] == [again.image_name(i) for i in range(3)]
    raw = [int(sub.image_name(i)[1:]) for i in range(3)]
    assert raw == sorted(raw) and len(set(raw)) == 3
    # Picklable for DataLoader workers, without dragging the memmap along.
    clone = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(clone[4], ds[4])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch.shape == (5, 3, 16, 16)
    with pytest.raises(DatasetError, match="resolution is 16, expected 32"):
        ImageDataset(tmp_path / "ds", resolution=32)
    with pytest.raises(IndexError):
        ds[5]


def test_dataset_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a dataset"):
        ImageDataset(tmp_path / "empty")
    d = tmp_path / "fake"
    d.mkdir()
    (d / "dataset.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DatasetError, match="expected 'opstylegan-dataset'"):
        ImageDataset(d)
    meta = {"format": "opstylegan-dataset", "version": 1, "resolution": 16, "channels": 3, "count": 4}
    (d / "dataset.json").write_text(json.dumps(meta))
    np.save(d / "images.npy", np.zeros((2, 3, 16, 16), np.uint8))
    with pytest.raises(DatasetError, match="does not match dataset.json"):
        ImageDataset(d)


def test_raw_folder_dataset(tmp_path: Path) -> None:
    d = tmp_path / "targets"
    d.mkdir()
    a, b = _rgb(16, 16, 1), _rgb(16, 16, 2)
    Image.fromarray(a).save(d / "a.png")
    Image.fromarray(b).save(d / "b.png")
    ds = ImageDataset(d)
    assert (len(ds), ds.resolution, ds.num_channels, ds.kind) == (2, 16, 3, "folder")
    np.testing.assert_array_equal(ds[1].numpy(), b.transpose(2, 0, 1))
    assert ds.image_name(0) == "a.png"
    assert ImageDataset(d, channels=1)[0].shape == (1, 16, 16)
    Image.fromarray(_rgb(20, 20, 3)).save(d / "c.png")
    ds = ImageDataset(d)
    with pytest.raises(ImageError, match=r"c\.png: is 20x20, but the first image is 16x16"):
        ds[2]
    assert ImageDataset(d, resolution=16)[2].shape == (3, 16, 16)
    Image.fromarray(_rgb(16, 24, 3)).save(d / "d.png")
    with pytest.raises(ImageError, match=r"d\.png: is 24x16, not square"):
        ImageDataset(d)[3]
    single = ImageDataset(d / "a.png")
    assert len(single) == 1 and single.kind == "image"


# --------------------------------------------------------------------------------------------------
# InfiniteSampler


def _take(sampler: InfiniteSampler, k: int) -> list[int]:
    return list(itertools.islice(iter(sampler), k))


def test_sampler_deterministic_and_epoch_permutations() -> None:
    a, b = _take(InfiniteSampler(10, seed=3), 30), _take(InfiniteSampler(10, seed=3), 30)
    assert a == b
    assert a != _take(InfiniteSampler(10, seed=4), 30)
    for e in range(3):
        assert sorted(a[10 * e : 10 * e + 10]) == list(range(10))
    assert a[:10] != a[10:20]  # a fresh permutation every epoch
    assert _take(InfiniteSampler(5, shuffle=False), 7) == [0, 1, 2, 3, 4, 0, 1]


def test_sampler_ranks_are_disjoint_shards() -> None:
    n, world = 12, 3
    global_stream = _take(InfiniteSampler(n, seed=7), 2 * n)
    shards = [_take(InfiniteSampler(n, rank=r, world_size=world, seed=7), 2 * n // world) for r in range(world)]
    for r in range(world):
        assert shards[r] == global_stream[r::world]
    first_epoch = [set(s[: n // world]) for s in shards]
    assert set.union(*first_epoch) == set(range(n))
    assert sum(len(s) for s in first_epoch) == n
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\], got 3"):
        InfiniteSampler(n, rank=3, world_size=3)
    with pytest.raises(ValueError, match="non-empty"):
        InfiniteSampler(0)


def test_sampler_resume() -> None:
    full = _take(InfiniteSampler(7, seed=1), 20)
    s = InfiniteSampler(7, seed=1)
    first = _take(s, 9)
    state = s.state_dict()
    assert state["index"] == 9
    t = InfiniteSampler(7, seed=1)
    t.load_state_dict(state)
    assert first + _take(t, 11) == full
    assert _take(InfiniteSampler(7, seed=1, start_index=9), 11) == full[9:]
    # Resuming on 2 ranks continues the same global stream.
    halves = [_take(InfiniteSampler(7, rank=r, world_size=2, seed=1, start_index=9), 3) for r in range(2)]
    assert halves[0] == full[10:16:2] and halves[1] == full[9:15:2]
    with pytest.raises(ValueError, match="seed=2"):
        InfiniteSampler(7, seed=1).load_state_dict({**state, "seed": 2})


# --------------------------------------------------------------------------------------------------
# Real data, when available


@pytest.mark.skipif(not (FMNIST / "t10k-images-idx3-ubyte.gz").exists(), reason="Fashion-MNIST not installed")
def test_fashion_mnist_first_64_test_images(tmp_path: Path) -> None:
    rep = build_dataset(FMNIST, tmp_path / "fm", resolution=32, channels=1, split="test", max_images=64)
    assert rep.count == 64 and rep.has_labels
    ds = ImageDataset(tmp_path / "fm")
    assert (len(ds), ds.resolution, ds.num_channels) == (64, 32, 1)
    labels = read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz")[:64]
    np.testing.assert_array_equal(ds.labels, labels)
    src = read_idx(FMNIST / "t10k-images-idx3-ubyte.gz")[:64]
    # Lanczos 28 -> 32 keeps the image: downsampling back is close to the original.
    back = np.stack([np.asarray(Image.fromarray(ds[i][0].numpy()).resize((28, 28), Image.Resampling.LANCZOS))
                     for i in range(64)]).astype(np.float64)
    assert np.abs(back - src).mean() < 8.0
