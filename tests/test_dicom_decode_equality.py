"""The reduced-resolution decode stores the same picture as pydicom's full decode, for every grayscale single-frame
DICOM that pydicom ships (every transfer syntax it bundles) and for JPEG 2000 variants written here (MONOCHROME1,
windows, signed, 8 to 16 bits, reversible and irreversible).

The reference is computed here from pydicom alone: ``pixel_array``, modality LUT, VOI LUT / window, MONOCHROME1
inversion, min-max. Files without a reduced path must match it exactly; JPEG 2000 files decoded at a reduced level
(a wavelet low-pass, not a box average) must agree in rank order and keep their grey levels. The last tests show
the thresholds catch the old fast path, which left Pillow's 16-bit rescaling in the samples.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data.data_manager import DATA_ROOT
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import JPEG2000, JPEG2000Lossless
from scipy.stats import spearmanr

from preprocessing import image_io
from preprocessing.image_io import ImageDecodeError, load_resized, resize_center_crop
from preprocessing.synth.phantom import render_frontal
from tests_support import write_dicom

MIN_RANK_CORRELATION = 0.8
MIN_LEVEL_FRACTION = 0.3   # grey levels kept, relative to the reference's


def _single_frame_gray(path: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # noqa: BLE001 - some bundled files are deliberately broken; they are not images
            return False
    frames = str(ds.get("NumberOfFrames", "1") or "1")
    return ("PixelData" in ds and ds.get("PhotometricInterpretation") in ("MONOCHROME1", "MONOCHROME2")
            and int(ds.get("SamplesPerPixel", 1)) == 1 and (not frames.isdigit() or int(frames) == 1))


# the files inside the pydicom wheel (get_testdata_files would also try to download its external set)
BUNDLED = sorted(str(p) for p in (Path(DATA_ROOT) / "test_files").rglob("*.dcm") if _single_frame_gray(str(p)))


def _reference(path: Path | str, size: int) -> np.ndarray:
    """pydicom's full decode with its LUTs, min-max to uint8 (written out here, not taken from image_io)."""
    ds = pydicom.dcmread(path)
    arr = apply_modality_lut(ds.pixel_array, ds)
    if "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds):
        arr = apply_voi_lut(arr, ds)
    arr = arr.astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = arr.max() - arr
    span = arr.max() - arr.min()
    gray = np.zeros(arr.shape, np.uint8) if span == 0 else np.rint((arr - arr.min()) * 255 / span).astype(np.uint8)
    return resize_center_crop(gray, size)


def _agrees(got: np.ndarray, ref: np.ndarray) -> bool:
    if len(np.unique(ref)) == 1:
        return bool((got == got.flat[0]).all())
    rho = spearmanr(got.ravel(), ref.ravel())[0]
    return bool(rho >= MIN_RANK_CORRELATION and len(np.unique(got)) >= MIN_LEVEL_FRACTION * len(np.unique(ref)))


def _sizes(path: Path | str) -> list[int]:
    """Sizes that make the fast path decode at reduced levels 1 and 2 (and the full size, level 0)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    short = min(int(ds.Rows), int(ds.Columns))
    return sorted({max(4, short // 4), max(4, short // 2), short})


def _is_j2k(path: Path | str) -> bool:
    return pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID in (JPEG2000, JPEG2000Lossless)


def _check(path: Path | str) -> None:
    for size in _sizes(path):
        try:
            ref = _reference(path, size)
        except Exception:  # noqa: BLE001 - what pydicom cannot decode must be a clear decode error, never pixels
            with pytest.raises(ImageDecodeError):
                load_resized(path, size, equalize_dicom=False)
            return
        got = load_resized(path, size, equalize_dicom=False).pixels
        if _is_j2k(path):
            assert _agrees(got, ref), (Path(path).name, size)
        else:  # no reduced decode exists for these syntaxes: the same pixels (float32 vs float64 rounding aside)
            assert np.abs(got.astype(int) - ref).max() <= 1, (Path(path).name, size)


def test_the_bundled_set_covers_the_syntaxes_and_depths() -> None:
    metas = [pydicom.dcmread(p, stop_before_pixels=True) for p in BUNDLED]
    syntaxes = {m.file_meta.TransferSyntaxUID.name for m in metas}
    assert len(BUNDLED) >= 15 and len(syntaxes) >= 10, syntaxes
    assert {JPEG2000.name, JPEG2000Lossless.name} <= syntaxes
    assert {int(m.PixelRepresentation) for m in metas} == {0, 1} and any("WindowCenter" in m for m in metas)


@pytest.mark.parametrize("path", BUNDLED, ids=[Path(p).name for p in BUNDLED])
def test_bundled_dicom_decodes_like_pydicom(path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _check(path)


# (bits stored, signed, photometric, transfer syntax, stored value range, extra tags): what real J2K files look like
VARIANTS = {
    "cr10_mono1_window": (10, False, "MONOCHROME1", JPEG2000Lossless, (40, 1000), {"WindowCenter": 400, "WindowWidth": 500}),
    "ct14_signed_soft_tissue": (14, True, "MONOCHROME2", JPEG2000, (-1000, 1500),
                                {"RescaleIntercept": 0, "RescaleSlope": 1, "WindowCenter": 40, "WindowWidth": 400}),
    "dx12_signed_mono1": (12, True, "MONOCHROME1", JPEG2000, (-2048, 2047), {}),
    "u8_irreversible": (8, False, "MONOCHROME2", JPEG2000, (0, 255), {}),
    "u16_reversible": (16, False, "MONOCHROME2", JPEG2000Lossless, (0, 65535), {}),
}


def write_j2k_variant(path: Path, name: str) -> Path:
    bits, signed, photometric, syntax, (low, high), tags = VARIANTS[name]
    image = render_frontal(260, 200, [], np.random.default_rng(len(name))).image
    dtype = np.int16 if signed else (np.uint8 if bits == 8 else np.uint16)
    ds = write_dicom(path, np.round(low + image * (high - low)).astype(dtype), photometric, bits, **tags)
    ds.compress(syntax, **({"j2k_cr": [15]} if syntax == JPEG2000 else {}))
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_j2k_variants_decode_like_pydicom(tmp_path: Path, name: str) -> None:
    _check(write_j2k_variant(tmp_path / f"{name}.dcm", name))


def test_reduced_decode_is_used_and_in_stored_units(tmp_path: Path) -> None:
    """Level 2 of a reversible file: the reduced samples are the full decode's values (a low-pass of them)."""
    path = write_j2k_variant(tmp_path / "v.dcm", "ct14_signed_soft_tissue")
    ds = pydicom.dcmread(path)
    reduced, scale = image_io._j2k_reduced(ds, 50)
    full = ds.pixel_array.astype(np.float64)
    box = full.reshape(50, 4, 65, 4).mean(axis=(1, 3))
    assert scale == 4.0 and reduced.shape == (50, 65)
    assert abs(reduced.mean() - box.mean()) < 0.01 * np.ptp(full)
    assert np.corrcoef(reduced.ravel(), box.ravel())[0, 1] > 0.98


def test_pillow_failure_falls_back_to_the_full_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A level Pillow cannot decode ("broken data stream") costs speed, not the image."""
    path = write_j2k_variant(tmp_path / "v.dcm", "cr10_mono1_window")

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("broken data stream")

    monkeypatch.setattr(image_io.Image, "open", broken)
    assert np.array_equal(load_resized(path, 50, equalize_dicom=False).pixels, _reference(path, 50))


def test_sign_mismatch_falls_back_to_the_full_decode() -> None:
    """The codestream says unsigned, the header signed: pydicom corrects it, so the fast path must not guess."""
    path = next(p for p in BUNDLED if Path(p).name == "J2K_pixelrep_mismatch.dcm")
    ds = pydicom.dcmread(path)
    assert image_io.j2k_siz(next(generate_frames(ds.PixelData, number_of_frames=1)))[1] is False
    assert image_io._j2k_reduced(ds, 64) is None
    assert np.array_equal(load_resized(path, 64, equalize_dicom=False).pixels, _reference(path, 64))


def _old_j2k_reduced(ds: pydicom.Dataset, min_side: int | None) -> tuple[np.ndarray, float] | None:
    """The fast path before the fix: Pillow's samples used as they came (10-bit data as 0..65472, signed data
    offset by 2**(p-1)), whatever the codestream's sign, with no fallback."""
    if min_side is None or ds.file_meta.TransferSyntaxUID not in (JPEG2000, JPEG2000Lossless):
        return None
    k = 0
    while k < 5 and min(int(ds.Rows), int(ds.Columns)) / 2 ** (k + 1) >= min_side:
        k += 1
    if k == 0:
        return None
    with Image.open(io.BytesIO(next(generate_frames(ds.PixelData, number_of_frames=1)))) as im:
        im.reduce = k
        im.load()
        return np.asarray(im), float(2**k)


def test_the_check_fails_on_the_old_fast_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same check, run on the old fast path, rejects its output for the kinds of file the issue names."""
    monkeypatch.setattr(image_io, "_j2k_reduced", _old_j2k_reduced)
    files = [write_j2k_variant(tmp_path / f"{n}.dcm", n) for n in ("cr10_mono1_window", "ct14_signed_soft_tissue")]
    files += [p for p in BUNDLED if Path(p).name in ("693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm")]
    for path in files:
        size = _sizes(path)[0]
        assert not _agrees(load_resized(path, size, equalize_dicom=False).pixels, _reference(path, size)), path
