"""Decode CXR images (JPEG, PNG, DICOM; colour DICOMs by luminance) to 8-bit grayscale and resize them into the
stored square frame.

Speed: MIMIC-CXR-JPG images are ~2500x3000 but are stored at 256/512 px, so JPEGs are decoded with Pillow's
``draft`` (libjpeg DCT scaling by 1/2, 1/4 or 1/8), which skips most of the IDCT and resize work (Huffman decoding
is not reduced, so the gain shrinks for large, noisy files). Geometry: the crop is taken
with the exact (possibly half-pixel) frame of :func:`preprocessing.box_geometry.crop_frame`, so stored pixels and
stored boxes agree.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image, ImageFile
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import JPEG2000, JPEG2000Lossless

from preprocessing.box_geometry import crop_frame

__all__ = [
    "Decoded", "ImageDecodeError", "ResizedImage", "decode_png", "encode_png", "equalize_hist", "j2k_siz", "load_gray",
    "load_resized", "load_resized_full_decode", "resize_center_crop",
]

log = logging.getLogger(__name__)
PathLike = str | os.PathLike[str]
_DICOM_SUFFIXES = {".dcm", ".dicom"}
_PIL_SUFFIXES = {".jpg", ".jpeg", ".png"}
_J2K_SYNTAXES = {JPEG2000Lossless, JPEG2000}
_GRAY_PHOTOMETRICS = {(1, "MONOCHROME1"), (1, "MONOCHROME2")}
# colour a radiograph may come in (a film scan, a PACS export); pydicom's pixel_array gives YBR back as RGB
_COLOUR_PHOTOMETRICS = {(3, "RGB"), (3, "YBR_FULL"), (3, "YBR_FULL_422")}
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


@dataclass
class Decoded:
    """A decoded file: ``gray`` may be smaller than ``width x height`` by ``scale`` (original px per decoded px)."""

    gray: np.ndarray
    width: int
    height: int
    scale: float
    modality: str | None  # DICOM Modality, upper case; "" for a DICOM without the tag, None for other formats


@dataclass
class ResizedImage:
    """``pixels``: the model's uint8 square; ``decoded``: the whole image as decoded (for drawing)."""

    pixels: np.ndarray
    decoded: np.ndarray
    width: int
    height: int
    modality: str | None


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


def j2k_siz(codestream: bytes) -> tuple[int, bool, int] | None:
    """``(components, signed, precision)`` of component 0 from a JPEG 2000 SIZ marker segment (ISO 15444-1 A.5.1).

    Works on a raw codestream and on a JP2 file (the codestream follows its boxes). None when there is no SIZ.
    """
    at = codestream.find(b"\xff\x4f\xff\x51")  # SOC then SIZ
    siz = codestream[at + 4:at + 4 + 41] if at >= 0 else b""
    if len(siz) < 41:
        return None
    ssiz = siz[38]
    return int.from_bytes(siz[36:38], "big"), bool(ssiz & 0x80), (ssiz & 0x7F) + 1


def _pillow_j2k_to_stored(arr: np.ndarray, mode: str, signed: bool, precision: int) -> np.ndarray:
    """Undo Pillow's rescaling of a decoded J2K component: it writes ``(v + 2**(p-1) if signed) << (bits - p)``
    into an 8-bit (``L``) or 16-bit (``I;16``) image; the inverse gives the codestream's own sample values."""
    shift = (8 if mode == "L" else 16) - precision
    stored = np.right_shift(arr.astype(np.int32), shift)
    return stored - (1 << (precision - 1)) if signed else stored


def _j2k_reduced(ds: pydicom.Dataset, min_side: int | None) -> tuple[np.ndarray, float] | None:
    """A JPEG 2000 frame decoded at a reduced resolution level, in the units of pydicom's full decode; else None.

    Full J2K decodes cost ~2 s for an 8 MP radiograph; decoding 2^k times smaller while the short side stays
    >= min_side is ~10x cheaper. Pillow's samples are mapped back to the codestream's values (see
    :func:`_pillow_j2k_to_stored`), which are pydicom's units when the codestream's signedness agrees with
    PixelRepresentation. Any other case (a sign mismatch pydicom corrects, > 16 bits, several components, a level
    Pillow cannot decode, an unexpected shape) returns None and the caller decodes in full: slower, never wrong.
    Returns (pixels, original px per decoded px).
    """
    if min_side is None or ds.file_meta.get("TransferSyntaxUID") not in _J2K_SYNTAXES:
        return None
    rows, cols = int(ds.Rows), int(ds.Columns)
    k = 0
    while k < 5 and min(rows, cols) / 2 ** (k + 1) >= min_side:
        k += 1
    if k == 0:
        return None
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    siz = j2k_siz(frame)
    if siz is None or siz[0] != 1 or siz[2] > 16 or siz[1] != (int(ds.get("PixelRepresentation", 0)) == 1):
        return None
    try:
        with Image.open(io.BytesIO(frame)) as im:
            im.reduce = k
            im.load()
            mode, arr = im.mode, np.asarray(im)
    except _PIL_ERRORS as exc:  # e.g. "broken data stream" at a level the full decode does not need
        log.debug("reduced J2K decode failed (%s); decoding in full", exc)
        return None
    if mode not in ("L", "I;16") or arr.shape != (-(-rows // 2**k), -(-cols // 2**k)):
        return None
    return _pillow_j2k_to_stored(arr, mode, siz[1], siz[2]), float(2**k)


def _int_tag(path: PathLike, ds: pydicom.Dataset, keyword: str, default: int) -> int:
    """An integer attribute, or an ImageDecodeError that names the tag and its stored value."""
    if keyword not in ds or ds.get_item(keyword).value in (None, b"", ""):
        return default
    try:
        return int(ds[keyword].value)
    except (TypeError, ValueError) as exc:
        raw = ds.get_item(keyword).value
        raise ImageDecodeError(path, f"invalid {keyword} {raw!r} ({type(exc).__name__})") from exc


def _ends_early(ds: pydicom.Dataset, file_size: int) -> bool:
    """pydicom stops silently at the end of a cut file: the last element then claims more bytes than are left, or
    a partial element header (under 8 bytes) trails it."""
    if not len(ds):
        return True
    last = ds.get_item(max(ds.keys()))
    tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if tell is None or length is None or length == 0xFFFFFFFF:
        return False
    return tell + length > file_size or 0 < file_size - (tell + length) < 8


def _pixels_cut_short(ds: pydicom.Dataset) -> str | None:
    """Why a native (uncompressed) PixelData element is incomplete, if it is: the file was cut inside it, and
    pydicom keeps the bytes that are there without a word."""
    item = ds.get_item("PixelData")
    length, value = getattr(item, "length", None), getattr(item, "value", None)
    if length is None or length == 0xFFFFFFFF or not isinstance(value, bytes) or len(value) >= length:
        return None
    return f"truncated file: its pixel data holds {len(value)} of {length} bytes"


def _read_dataset(path: PathLike) -> pydicom.Dataset:
    """Parse a DICOM file and check it holds one grayscale or colour frame; reasons tell truncation from missing
    pixels. A colour radiograph (a film scan, a PACS export) is kept and converted to luminance; several frames
    are refused: a multi-frame chest DX is a dual-energy set or a tomosynthesis series, and which of its frames the
    labels and boxes describe is unknown, so keeping any one of them could pair a bone image with soft-tissue
    findings."""
    with open(path, "rb") as fh:
        try:
            ds = pydicom.dcmread(fh)
        except Exception as e:  # pydicom raises many types on garbage (struct, EOF, Key, Value, InvalidDicom)
            raise ImageDecodeError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from e
    if "PixelData" not in ds:
        cut = _ends_early(ds, os.path.getsize(path))
        raise ImageDecodeError(path, "truncated file: its pixel data is missing or incomplete" if cut
                               else "no pixel data")
    if (short := _pixels_cut_short(ds)) is not None:
        raise ImageDecodeError(path, short)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    samples = _int_tag(path, ds, "SamplesPerPixel", 1)
    if (samples, photometric) not in _GRAY_PHOTOMETRICS and (samples, photometric) not in _COLOUR_PHOTOMETRICS:
        raise ImageDecodeError(path, f"unsupported PhotometricInterpretation={photometric!r} with SamplesPerPixel="
                                     f"{samples} (grayscale, RGB and YBR_FULL(_422) are read)")
    if (frames := _int_tag(path, ds, "NumberOfFrames", 1)) != 1:
        raise ImageDecodeError(path, f"multi-frame DICOM ({frames} frames): which frame the labels describe is unknown")
    for keyword in ("Rows", "Columns"):
        if _int_tag(path, ds, keyword, 0) <= 0:
            raise ImageDecodeError(path, f"invalid {keyword} {ds.get(keyword)!r}")
    return ds


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an (H, W, 3) RGB array as float64 (the weights of Pillow's ``convert("L")``).

    Summed with integer weights, then divided by 1000: a gray pixel stored as three equal channels gives back its
    own value exactly, so a grayscale image saved as RGB stores the same pixels as the original.
    """
    weighted = rgb.astype(np.int64) @ np.array([299, 587, 114], dtype=np.int64)
    return weighted / 1000.0


def _stored_pixels(path: PathLike, ds: pydicom.Dataset, min_side: int | None) -> tuple[np.ndarray, float]:
    """Pixels after the modality LUT and any VOI LUT / window (colour: luminance instead), and the decode scale
    (original px per decoded px)."""
    try:
        reduced = _j2k_reduced(ds, min_side)
        arr, scale = reduced if reduced is not None else (ds.pixel_array, 1.0)
        if _is_colour(ds):   # pydicom returns YBR as RGB; modality and VOI LUTs are defined for grayscale only
            arr = _luminance(arr)
        else:
            arr = apply_modality_lut(arr, ds)
            if "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds):
                arr = apply_voi_lut(arr, ds)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - decoder plugins raise arbitrary types, Rust panics (BaseException) too
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        raise ImageDecodeError(path, f"pixel data (transfer syntax {syntax}): {type(e).__name__}: {e}") from e
    if arr.ndim != 2 or arr.size == 0:
        raise ImageDecodeError(path, f"expected one 2-D frame, got shape {arr.shape}")
    return arr, scale


def _is_colour(ds: pydicom.Dataset) -> bool:
    """Checked by :func:`_read_dataset` to be one of the colour interpretations read."""
    return (int(ds.get("SamplesPerPixel") or 1), str(ds.get("PhotometricInterpretation", ""))) in _COLOUR_PHOTOMETRICS


def _load_dicom(path: PathLike, min_side: int | None = None) -> Decoded:
    """DICOM -> uint8: modality LUT, VOI LUT/window if present, MONOCHROME1 inverted (colour: BT.601 luminance
    instead), min-max to [0, 255]; JPEG 2000 is decoded at a reduced level when min_side allows (scale > 1), in
    the same units as the full decode.

    Min-max after the VOI step: a window inside the data range saturates both ends, so min-max reproduces it
    exactly; without VOI tags this is the reference's plain min-max. MONOCHROME1 is inverted by negation before
    the min-max, which keeps it bit-identical to the equivalent MONOCHROME2 file.
    """
    ds = _read_dataset(path)
    arr, scale = _stored_pixels(path, ds, min_side)
    arr = arr.astype(np.float32)
    inverted = str(ds.PhotometricInterpretation) == "MONOCHROME1"
    gray = _to_uint8_minmax(np.negative(arr, out=arr) if inverted else arr)
    modality = str(ds.get("Modality") or "").strip().upper()
    return Decoded(gray, int(ds.Columns), int(ds.Rows), scale, modality)


def _load(path: PathLike, min_side: int | None, equalize_dicom: bool, allow_truncated: bool) -> Decoded:
    """:func:`load_gray` plus the decode scale and the DICOM modality, which :func:`load_resized` needs."""
    if os.path.isdir(path):
        raise ImageDecodeError(path, "is a directory, not an image file")
    if os.path.getsize(path) == 0:   # a failed copy or download; decoders would only say "cannot identify"
        raise ImageDecodeError(path, "empty file (0 bytes)")
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix in _DICOM_SUFFIXES or (suffix not in _PIL_SUFFIXES and _has_dicm_preamble(path)):
        dec = _load_dicom(path, min_side)
        if equalize_dicom:
            dec.gray = equalize_hist(dec.gray)
        return dec
    gray, w, h, scale = _load_pil(path, min_side, allow_truncated)
    if gray.size == 0:
        raise ImageDecodeError(path, "zero-size image")
    return Decoded(gray, w, h, scale, None)


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
    dec = _load(path, min_side, equalize_dicom, allow_truncated)
    return dec.gray, dec.width, dec.height


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
) -> ResizedImage:
    """The model's ``size`` square of an image file, decoded at the smallest exact scale (JPEG draft, J2K level).

    The one path from a file to model pixels: ingest stores ``pixels``, and ``chex query`` feeds the same
    ``pixels`` to the model, so training and inference see identical inputs.
    """
    dec = _load(path, size, equalize_dicom, allow_truncated)
    pixels = _resize_crop(dec.gray, size, (dec.width / dec.scale, dec.height / dec.scale))
    return ResizedImage(pixels, dec.gray, dec.width, dec.height, dec.modality)


def load_resized_full_decode(
    path: PathLike, size: int, equalize_dicom: bool = True, *, allow_truncated: bool = False
) -> ResizedImage:
    """Baseline for benchmarks and equality tests: full-resolution decode, then :func:`resize_center_crop`."""
    dec = _load(path, None, equalize_dicom, allow_truncated)
    return ResizedImage(resize_center_crop(dec.gray, size), dec.gray, dec.width, dec.height, dec.modality)


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
