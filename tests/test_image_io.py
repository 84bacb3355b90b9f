"""Decoding (JPEG draft, truncation, PNG modes, DICOM variants) and the resize/crop frame; data made in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless, RLELossless

from preprocessing import image_io
from tests_support import write_dicom
from preprocessing.box_geometry import crop_frame
from preprocessing.image_io import (
    ImageDecodeError,
    decode_png,
    encode_png,
    equalize_hist,
    load_gray,
    load_resized,
    load_resized_full_decode,
    resize_center_crop,
)


def _smooth(h: int, w: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """CXR-like smooth float image in [0, scale]: a few low-frequency waves plus a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = 0.5 + 0.2 * np.sin(7 * x + 3 * y) + 0.15 * np.cos(11 * y - 2 * x) + 0.05 * rng.standard_normal((h, w))
    return np.clip(img, 0, 1) * scale


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jpg") / "big.jpg"
    Image.fromarray(_smooth(2400, 2000, scale=255).astype(np.uint8)).save(path, quality=95)
    return path


# --- resize / crop frame -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("w", "h"), [(61, 40), (40, 61), (81, 50)])
def test_resize_crop_offsets_follow_crop_frame(w: int, h: int) -> None:
    """A steep ramp along the long axis: each stored pixel must show the original coordinate of its centre.

    Enlarging, because bilinear interpolation reproduces a linear ramp exactly (BOX shrinking samples its kernel at
    pixel centres and may shift by up to half a source pixel). At ~4 gray levels per source pixel, rounding the
    half-pixel crop offset of these odd sizes would miss by > 2 levels.
    """
    size = 80
    x_off, y_off, side = crop_frame(w, h)
    long_axis, n, off = (1, w, x_off) if w > h else (0, h, y_off)
    ramp = (np.arange(n) + 0.5) * 255 / n  # value = pixel-centre coordinate, scaled into uint8
    img = np.broadcast_to(np.expand_dims(ramp, 1 - long_axis), (h, w)).round().astype(np.uint8)
    out = resize_center_crop(np.ascontiguousarray(img), size).astype(np.float64)
    assert out.shape == (size, size)
    expected = (off + (np.arange(size) + 0.5) * side / size) * 255 / n
    got = out.mean(axis=1 - long_axis)
    np.testing.assert_allclose(got[3:-3], expected[3:-3], atol=1.0)  # edges: the filter reaches past the crop


def test_resize_upscales_small_images() -> None:
    out = resize_center_crop(np.full((48, 64), 77, np.uint8), 128)
    assert out.shape == (128, 128) and (out == 77).all()


# --- JPEG ----------------------------------------------------------------------------------------------------------


def test_jpeg_draft_decodes_smaller_and_matches_full_decode(big_jpeg: Path) -> None:
    full, w, h = load_gray(big_jpeg)
    assert (w, h) == (2000, 2400) and full.shape == (2400, 2000)
    drafted, w2, h2 = load_gray(big_jpeg, min_side=512)
    assert (w2, h2) == (2000, 2400)
    assert drafted.shape == (1200, 1000)  # DCT scale 1/2: short side stays >= 512
    assert load_gray(big_jpeg, min_side=256)[0].shape == (600, 500)  # scale 1/4
    for size in (512, 256):
        fast = load_resized(big_jpeg, size)
        slow = load_resized_full_decode(big_jpeg, size).pixels
        assert fast.pixels.shape == slow.shape == (size, size) and (fast.width, fast.height) == (2000, 2400)
        assert np.abs(fast.pixels.astype(int) - slow.astype(int)).mean() < 3
        assert fast.modality is None and fast.decoded.shape == (2400 // (1024 // size), 2000 // (1024 // size))


def test_truncated_jpeg(tmp_path: Path, big_jpeg: Path) -> None:
    data = big_jpeg.read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="cut.jpg"):
        load_gray(path)
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_resized(path, 256)
    img, w, h = load_gray(path, allow_truncated=True)
    assert img.shape == (2400, 2000) and (w, h) == (2000, 2400)
    assert load_resized(path, 256, allow_truncated=True).pixels.shape == (256, 256)
    with pytest.raises(ImageDecodeError):  # the permissive switch was restored
        load_gray(path)


def test_missing_file_is_not_a_decode_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_gray(tmp_path / "nope.jpg")


# --- PNG -----------------------------------------------------------------------------------------------------------


def test_png_modes(tmp_path: Path) -> None:
    gray = _smooth(40, 50, scale=255).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "l.png")
    assert np.array_equal(load_gray(tmp_path / "l.png")[0], gray)

    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(load_gray(tmp_path / "rgba.png")[0], gray)

    for top in (4095, 65535):  # 12-bit data in a 16-bit PNG, and full 16-bit data
        arr = np.round(_smooth(40, 50, seed=1) * top).astype(np.uint16)
        arr[0, 0] = top
        Image.fromarray(arr).save(tmp_path / f"i16_{top}.png")
        got = load_gray(tmp_path / f"i16_{top}.png")[0]
        assert got.dtype == np.uint8 and got.max() == 255
        np.testing.assert_allclose(got, arr * 255.0 / top, atol=0.51)


def test_png_bytes_roundtrip_deterministic() -> None:
    img = _smooth(64, 64, scale=255).astype(np.uint8)
    data = encode_png(img)
    assert data == encode_png(img) and np.array_equal(decode_png(data), img)
    with pytest.raises(ImageDecodeError):
        decode_png(data[:50])


# --- DICOM ---------------------------------------------------------------------------------------------------------


def _raw(bits: int, seed: int = 0) -> np.ndarray:
    return np.round(_smooth(64, 80, seed=seed, scale=2**bits - 1)).astype(np.uint16)


@pytest.mark.parametrize("bits", [12, 16])
def test_dicom_monochrome1_and_compressed_match(tmp_path: Path, bits: int) -> None:
    arr = _raw(bits)
    write_dicom(tmp_path / "m2.dcm", arr, "MONOCHROME2", bits)
    write_dicom(tmp_path / "m1.dicom", (2**bits - 1) - arr, "MONOCHROME1", bits)
    ref, w, h = load_gray(tmp_path / "m2.dcm")
    assert (w, h) == (80, 64) and ref.min() == 0 and ref.max() == 255
    np.testing.assert_allclose(ref, (arr - arr.min()) * 255.0 / np.ptp(arr), atol=0.51)
    assert np.array_equal(load_gray(tmp_path / "m1.dicom")[0], ref)
    for uid in (RLELossless, JPEG2000Lossless):
        ds = pydicom.dcmread(tmp_path / "m2.dcm")
        ds.compress(uid)
        ds.save_as(tmp_path / "c.dcm", enforce_file_format=True)
        assert np.array_equal(load_gray(tmp_path / "c.dcm")[0], ref), uid.name


def test_dicom_voi_window_applied(tmp_path: Path) -> None:
    arr = np.tile(np.arange(4096, dtype=np.uint16).reshape(64, 64), (1, 1))
    write_dicom(tmp_path / "win", arr, "MONOCHROME2", 12, WindowCenter=2048, WindowWidth=1024)  # no suffix
    got = load_gray(tmp_path / "win")[0].astype(np.float64)
    c, width = 2048 - 0.5, 1024 - 1  # DICOM PS3.3 C.11.2.1.2 linear window, computed independently
    expected = np.clip(((arr - c) / width + 0.5) * 255, 0, 255)
    np.testing.assert_allclose(got, expected, atol=1.0)
    assert (got[arr < 1500] == 0).all() and (got[arr > 2600] == 255).all()


def test_dicom_failures_raise_decode_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "rand.dcm").write_bytes(b"\0" * 128 + b"DICM" + rng.bytes(4000))
    write_dicom(tmp_path / "ok.dcm", _raw(12), "MONOCHROME2", 12)
    data = (tmp_path / "ok.dcm").read_bytes()
    (tmp_path / "short.dcm").write_bytes(data[: len(data) - 3000])
    write_dicom(tmp_path / "multi.dcm", np.stack([_raw(12), _raw(12, 1)]), "MONOCHROME2", 12)
    write_dicom(tmp_path / "pal.dcm", np.zeros((8, 8), np.uint8), "PALETTE COLOR", 8)
    ds = pydicom.dcmread(tmp_path / "ok.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    for name in ("rand.dcm", "short.dcm", "multi.dcm", "pal.dcm", "nopix.dcm"):
        with pytest.raises(ImageDecodeError, match=name):
            load_gray(tmp_path / name)


def test_dicom_equalized_and_resized(tmp_path: Path) -> None:
    write_dicom(tmp_path / "e.dcm", _raw(12), "MONOCHROME2", 12)
    img = load_resized(tmp_path / "e.dcm", 32)
    assert img.pixels.shape == (32, 32) and (img.width, img.height) == (80, 64) and img.modality == ""
    eq = load_gray(tmp_path / "e.dcm", equalize_dicom=True)[0]
    assert np.array_equal(eq, equalize_hist(load_gray(tmp_path / "e.dcm")[0]))


# --- equalization --------------------------------------------------------------------------------------------------


def test_equalize_flattens_histogram_and_keeps_order() -> None:
    rng = np.random.default_rng(3)
    img = np.clip(rng.normal(80, 30, size=(300, 300)), 0, 255).astype(np.uint8)
    out = equalize_hist(img)
    levels = np.arange(256)
    cdf = np.searchsorted(np.sort(out.ravel()), levels, side="right") / out.size  # independent of bincount
    assert np.abs(cdf - (levels + 1) / 256).max() < 0.03
    order = np.argsort(img.ravel(), kind="stable")
    assert (np.diff(out.ravel()[order].astype(int)) >= 0).all()  # monotone mapping
    assert out.min() == 0 and out.max() == 255
    assert np.array_equal(equalize_hist(np.full((4, 4), 9, np.uint8)), np.full((4, 4), 9, np.uint8))


def test_j2k_dicom_decodes_at_a_reduced_level_and_matches_full_decode(tmp_path: Path) -> None:
    from preprocessing.synth.phantom import render_frontal

    arr = np.round(render_frontal(800, 600, [], np.random.default_rng(3)).image * 4095).astype(np.uint16)
    ds = write_dicom(tmp_path / "u.dcm", arr, "MONOCHROME1", 12)
    ds.compress(JPEG2000Lossless)
    ds.save_as(tmp_path / "j.dcm", enforce_file_format=True)
    dec = image_io._load(tmp_path / "j.dcm", 128, False, False)
    assert (dec.width, dec.height) == (800, 600) and dec.scale == 4.0 and dec.gray.shape == (150, 200)  # 600/4 >= 128 > 600/8
    fast = load_resized(tmp_path / "j.dcm", 128, equalize_dicom=False).pixels
    full = load_resized_full_decode(tmp_path / "u.dcm", 128, equalize_dicom=False).pixels
    # a reduced level is the wavelet low-pass, not a box average: close, not bit-identical (like JPEG draft mode)
    assert np.abs(fast.astype(float) - full).mean() < 4.0
    assert np.corrcoef(fast.ravel(), full.ravel())[0, 1] > 0.99


def test_dicom_reject_reasons_say_what_happened(tmp_path: Path) -> None:
    """Cut before the pixel data vs. no pixel data at all; the invalid tag by name; a folder vs. a missing file."""
    write_dicom(tmp_path / "ok.dcm", _raw(12), "MONOCHROME2", 12, PatientName="x" * 60, StudyDescription="y" * 60)
    data = (tmp_path / "ok.dcm").read_bytes()
    pixel_tag = data.index(b"\xe0\x7f\x10\x00")   # (7FE0,0010) little endian
    for cut in (pixel_tag - 3, pixel_tag - 200, pixel_tag + 4):
        (tmp_path / "cut.dcm").write_bytes(data[:cut])
        with pytest.raises(ImageDecodeError, match="truncated"):
            load_gray(tmp_path / "cut.dcm")
    ds = pydicom.dcmread(tmp_path / "ok.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    with pytest.raises(ImageDecodeError, match="no pixel data"):
        load_gray(tmp_path / "nopix.dcm")
    ds = pydicom.dcmread(tmp_path / "ok.dcm")
    ds.NumberOfFrames = 1
    ds.save_as(tmp_path / "frames.dcm", enforce_file_format=True)
    element = b"\x28\x00\x08\x00IS\x02\x001 "   # (0028,0008) IS "1 ", written as a bad scanner would: "1A"
    raw = (tmp_path / "frames.dcm").read_bytes()
    assert raw.count(element) == 1
    (tmp_path / "frames.dcm").write_bytes(raw.replace(element, element[:-2] + b"1A"))
    with pytest.raises(ImageDecodeError, match=r"invalid NumberOfFrames '1A'"):
        load_gray(tmp_path / "frames.dcm")
    (tmp_path / "folder.dcm").mkdir()
    with pytest.raises(ImageDecodeError, match="is a directory"):
        load_gray(tmp_path / "folder.dcm")
