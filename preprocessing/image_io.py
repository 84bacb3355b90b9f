"""Decode CXR images (JPEG, PNG, DICOM) to 8-bit grayscale and resize them into the stored square frame.

Speed: MIMIC-CXR-JPG images are ~2500x3000 but are stored at 256/512 px, so JPEGs are decoded with Pillow's
``draft`` (libjpeg DCT scaling by 1/2, 1/4 or 1/8), which skips most of the IDCT and resize work (Huffman decoding
is not reduced, so the gain shrinks for large, noisy files). Geometry: the crop is taken
with the exact (possibly half-pixel) frame of :func:`preprocessing.box_geometry.crop_frame`, so stored pixels and
stored boxes agree.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pydicom
from PIL import Image, ImageFile
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import JPEG2000, JPEG2000Lossless

from preprocessing.box_geometry import crop_frame

__all__ = [
    "ImageDecodeError", "decode_png", "encode_png", "equalize_hist", "load_gray", "load_resized",
    "load_resized_full_decode", "resize_center_crop",
]

PathLike = str | os.PathLike[str]
_DICOM_SUFFIXES = {".dcm", ".dicom"}
_PIL_SUFFIXES = {".jpg", ".jpeg", ".png"}
_J2K_SYNTAXES = {JPEG2000Lossless, JPEG2000}
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# Level 1: on 512-px CXR-like images level 6 was only ~15% smaller but 5x slower to encode (~50 vs 10 ms, more
# than the whole draft decode); PNG decode speed does not depend on the level.
PNG_COMPRESS_LEVEL = 1

ImageFile.LOAD_TRUNCATED_IMAGES = False  # strict by default; truncation is opted into per call


class ImageDecodeError(ValueError):
    """An image file that cannot be turned into a 2-D grayscale array; the message names the file."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot decode image {self.path}: {reason}")


class _TruncationGate:
    """Pillow's ``LOAD_TRUNCATED_IMAGES`` is process-global: permissive loads flip it exclusively, strict share.

    Without this, a strict load on another thread could silently accept a truncated file while a permissive
    load has the switch on.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._strict = 0
        self._permissive = False

    @contextmanager
    def __call__(self, allow_truncated: bool) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._permissive and (not allow_truncated or self._strict == 0))
            if allow_truncated:
                self._permissive = ImageFile.LOAD_TRUNCATED_IMAGES = True
            else:
                self._strict += 1
        try:
            yield
        finally:
            with self._cond:
                if allow_truncated:
                    self._permissive = ImageFile.LOAD_TRUNCATED_IMAGES = False
                else:
                    self._strict -= 1
                self._cond.notify_all()


_truncation = _TruncationGate()


def equalize_hist(img: np.ndarray) -> np.ndarray:
    """Histogram equalization of a uint8 image via its CDF (as the reference applies to VinDr and MIMIC images).

    The LUT comes from the numpy CDF; counting and applying it go through Pillow's C loops, 3x faster than
    ``np.bincount`` + fancy indexing on a 2500x3000 image.
    """
    pil = Image.fromarray(img)
    hist = np.asarray(pil.histogram())
    cdf = np.cumsum(hist)
    cdf_min = cdf[np.flatnonzero(hist)[0]]
    if cdf[-1] == cdf_min:  # constant image: nothing to spread
        return img.copy()
    lut = np.rint((cdf - cdf_min) * (255.0 / (cdf[-1] - cdf_min))).astype(np.uint8)
    return np.asarray(pil.point(lut.tolist()))


def _to_uint8_minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    out = arr - lo  # float32 in, float32 out (half the memory traffic of float64; exact for 16-bit integers)
    out *= 255.0 / (hi - lo)
    return np.rint(out, out=out).astype(np.uint8)


def _pil_to_gray(im: Image.Image) -> np.ndarray:
    """8-bit L from any single-image Pillow mode.

    16/32-bit integer data is scaled by its actual bit range (``2**bit_length(max) - 1``, at least 8 bits): Pillow's
    own ``convert("L")`` clips at 255, and a plain 16-bit divide would make 12-bit data nearly black. Alpha is
    dropped (RGBA CXRs have opaque alpha; compositing would only darken transparent pixels arbitrarily).
    """
    if im.mode == "L":
        return np.asarray(im)
    if im.mode in ("I", "I;16", "I;16B", "I;16L"):  # PNG stores no negative values
        arr = np.asarray(im)
        top = 2 ** max(8, int(arr.max()).bit_length()) - 1
        return np.rint(arr * (255.0 / top)).astype(np.uint8)
    return np.asarray(im.convert("L"))


def _load_pil(path: PathLike, min_side: int | None, allow_truncated: bool) -> tuple[np.ndarray, int, int, float]:
    """Returns ``(gray, orig_w, orig_h, draft_scale)``; ``draft_scale`` = original px per decoded px (1, 2, 4, 8)."""
    with open(path, "rb") as fh:  # outside the try: a missing file is the caller's bug, not bad data
        try:
            with _truncation(allow_truncated), Image.open(fh) as im:
                orig_w, orig_h = im.size
                scale = 1.0
                if min_side is not None and im.format == "JPEG":
                    drafted = im.draft("L", (min_side, min_side))
                    if drafted is not None:
                        scale = orig_w / drafted[1][2]
                im.load()
                gray = _pil_to_gray(im)
        except _PIL_ERRORS as e:
            raise ImageDecodeError(path, f"{type(e).__name__}: {e}") from e
    return gray, orig_w, orig_h, scale


def _has_dicm_preamble(path: PathLike) -> bool:
    with open(path, "rb") as fh:
        return fh.read(132)[128:] == b"DICM"


def _j2k_reduced(ds: pydicom.Dataset, min_side: int | None) -> tuple[np.ndarray, float] | None:
    """JPEG 2000 frames decoded at a reduced resolution level (JPEG 2000's own "draft mode"), or None.

    Full J2K decodes cost ~2 s for an 8 MP radiograph; decoding 2^k times smaller while the short side stays
    >= min_side is ~10x cheaper and exact at that level. Returns (pixels, original px per decoded px).
    """
    if min_side is None or ds.file_meta.get("TransferSyntaxUID") not in _J2K_SYNTAXES:
        return None
    k = 0
    while k < 5 and min(int(ds.Rows), int(ds.Columns)) / 2 ** (k + 1) >= min_side:
        k += 1
    if k == 0:
        return None
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    with Image.open(io.BytesIO(frame)) as im:
        im.reduce = k
        im.load()
        return np.asarray(im), float(2**k)


def _load_dicom(path: PathLike, min_side: int | None = None) -> tuple[np.ndarray, int, int, float]:
    """DICOM -> (uint8, width, height, scale): modality LUT, VOI LUT/window if present, MONOCHROME1 inverted,
    min-max to [0, 255]; JPEG 2000 is decoded at a reduced level when min_side allows (scale > 1).

    Min-max after the VOI step: a window inside the data range saturates both ends, so min-max reproduces it
    exactly; without VOI tags this is the reference's plain min-max. MONOCHROME1 is inverted by negation before
    the min-max, which keeps it bit-identical to the equivalent MONOCHROME2 file.
    """
    with open(path, "rb") as fh:
        try:
            ds = pydicom.dcmread(fh)
        except Exception as e:  # pydicom raises many types on garbage (struct, EOF, Key, Value, InvalidDicom)
            raise ImageDecodeError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from e
    if "PixelData" not in ds:
        raise ImageDecodeError(path, "no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("SamplesPerPixel", 1)) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageDecodeError(
            path, f"only grayscale is supported (PhotometricInterpretation={photometric!r}, "
            f"SamplesPerPixel={ds.get('SamplesPerPixel')})"
        )
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise ImageDecodeError(path, f"unsupported multi-frame DICOM ({ds.NumberOfFrames} frames)")
    try:
        reduced = _j2k_reduced(ds, min_side)
        arr, scale = reduced if reduced is not None else (ds.pixel_array, 1.0)
        arr = apply_modality_lut(arr, ds)
        if "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds):
            arr = apply_voi_lut(arr, ds)
    except Exception as e:  # decoder plugins raise arbitrary types (unsupported syntax, short data, codec errors)
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        raise ImageDecodeError(path, f"pixel data (transfer syntax {syntax}): {type(e).__name__}: {e}") from e
    if arr.ndim != 2 or arr.size == 0:
        raise ImageDecodeError(path, f"expected one 2-D frame, got shape {arr.shape}")
    arr = arr.astype(np.float32)
    gray = _to_uint8_minmax(np.negative(arr, out=arr) if photometric == "MONOCHROME1" else arr)
    return gray, int(ds.Columns), int(ds.Rows), scale


def _load(
    path: PathLike, min_side: int | None, equalize_dicom: bool, allow_truncated: bool
) -> tuple[np.ndarray, int, int, float]:
    """:func:`load_gray` plus the JPEG draft scale (original px per decoded px), which :func:`load_resized` needs."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix in _DICOM_SUFFIXES or (suffix not in _PIL_SUFFIXES and _has_dicm_preamble(path)):
        gray, w, h, scale = _load_dicom(path, min_side)
        return (equalize_hist(gray) if equalize_dicom else gray), w, h, scale
    gray, w, h, scale = _load_pil(path, min_side, allow_truncated)
    if gray.size == 0:
        raise ImageDecodeError(path, "zero-size image")
    return gray, w, h, scale


def load_gray(
    path: PathLike, min_side: int | None = None, *, equalize_dicom: bool = False, allow_truncated: bool = False
) -> tuple[np.ndarray, int, int]:
    """Decode to ``(uint8 (H', W'), orig_w, orig_h)``; dispatch on extension, else on the DICOM ``DICM`` preamble.

    ``min_side`` lets JPEGs decode at a reduced DCT scale whose short side stays ``>= min_side`` (so the array is
    smaller than ``orig_h x orig_w``), and JPEG 2000 DICOMs decode at a reduced resolution level; other
    formats ignore it. ``equalize_dicom`` equalizes DICOMs only: the
    MIMIC JPGs were equalized at conversion. ``allow_truncated`` accepts truncated JPEG/PNG files, as the reference
    does for MIMIC (a JPEG's missing rows come out mid-gray).
    """
    gray, w, h, _ = _load(path, min_side, equalize_dicom, allow_truncated)
    return gray, w, h


def _resize_crop(img: np.ndarray, size: int, extent: tuple[float, float]) -> np.ndarray:
    """Resize + centre crop ``img`` whose pixels span ``extent = (w, h)`` original-image units after scaling."""
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {img.dtype} {img.shape}")
    x0, y0, side = crop_frame(*extent)
    # BOX = area averaging, what the reference's cv2 INTER_AREA does when shrinking; its 1-px kernel is several
    # times cheaper than LANCZOS's 6-px one, with no aliasing at these large factors. Pillow samples the box at
    # source-pixel centres, so a window may sit up to half a SOURCE pixel off (0.1 stored px at 2500 -> 512).
    # INTER_AREA enlarges bilinearly, so do we.
    resample = Image.Resampling.BOX if side >= size else Image.Resampling.BILINEAR
    out = Image.fromarray(img).resize((size, size), resample, box=(x0, y0, x0 + side, y0 + side))
    return np.asarray(out)


def resize_center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Short side -> ``size``, then centre crop to ``size x size`` (= reference SmallestMaxSize + CenterCrop).

    Implemented as one resize of the exact crop frame (half-pixel offsets included) instead of resize-then-integer-
    crop, so pixels use the same frame as :func:`~preprocessing.box_geometry.xyxy_to_stored_cxcywh`.
    """
    h, w = img.shape[:2]
    return _resize_crop(img, size, (float(w), float(h)))


def load_resized(
    path: PathLike, size: int, equalize_dicom: bool = True, *, allow_truncated: bool = False
) -> tuple[np.ndarray, int, int]:
    """``(uint8 (size, size), orig_w, orig_h)`` using JPEG draft decoding; the crop uses the draft's exact scale."""
    gray, w, h, scale = _load(path, size, equalize_dicom, allow_truncated)
    return _resize_crop(gray, size, (w / scale, h / scale)), w, h


def load_resized_full_decode(
    path: PathLike, size: int, equalize_dicom: bool = True, *, allow_truncated: bool = False
) -> tuple[np.ndarray, int, int]:
    """Baseline for benchmarks: full-resolution decode, then :func:`resize_center_crop`."""
    gray, w, h = load_gray(path, None, equalize_dicom=equalize_dicom, allow_truncated=allow_truncated)
    return resize_center_crop(gray, size), w, h


def encode_png(img: np.ndarray) -> bytes:
    """uint8 (H, W) -> PNG bytes; deterministic (Pillow writes no timestamp chunk), fast zlib level."""
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {img.dtype} {img.shape}")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes (e.g. a Parquet cell) -> uint8 (H, W)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _pil_to_gray(im)
    except _PIL_ERRORS as e:
        raise ImageDecodeError("<png bytes>", f"{type(e).__name__}: {e}") from e
