"""Read chest X-rays (JPEG, PNG, BMP, TIFF, DICOM) into upright uint8 grayscale arrays.

Every failure raises :class:`ImageReadError` naming the input and the reason.
Colour is reduced to ITU-R 601 luminance; alpha channels are ignored (not
composited). Oversized images are refused from their header, before decoding.
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from typing import BinaryIO

import numpy as np
import pydicom
from PIL import BmpImagePlugin, Image, ImageOps, JpegImagePlugin, PngImagePlugin, TiffImagePlugin
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

__all__ = ["MAX_PIXELS", "SUPPORTED_FORMATS", "ImageReadError", "max_image_pixels", "open_regular", "read_file",
           "read_xray"]

MAX_PIXELS = 50_000_000
SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "DICOM")
_MAX_PIXELS_ENV = "PNEUMO_ML_MAX_PIXELS"
# Lazy openers (parse the header only). Used instead of Image.open, whose own size
# check would pre-empt PNEUMO_ML_MAX_PIXELS, and which would also try magic-less
# formats (e.g. TGA) that accept random bytes.
_PIL_OPENERS = {
    "JPEG": JpegImagePlugin.jpeg_factory,
    "PNG": PngImagePlugin.PngImageFile,
    "BMP": BmpImagePlugin.BmpImageFile,
    "TIFF": TiffImagePlugin.TiffImageFile,
}
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"GIF8", "GIF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"%PDF", "PDF"),
)
_DICOM_MAGIC_OFFSET = 128
# Group numbers (little-endian) a DICOM stream without preamble starts with:
# file meta (0002) or identifying module (0008). Gates the lenient pydicom parse.
_RAW_DICOM_STARTS = (b"\x02\x00", b"\x08\x00")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class ImageReadError(ValueError):
    """An input could not be read as an X-ray image; the message says which and why."""


def read_xray(
    src: str | os.PathLike | bytes | bytearray | memoryview,
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    draft_size: int | None = None,
) -> np.ndarray:
    """Decode ``src`` (a path, or the image file's bytes) to a C-contiguous uint8 H×W array.

    ``name`` labels error messages (default: the path, or ``"<bytes>"``).
    ``max_pixels`` overrides the size limit (default: env PNEUMO_ML_MAX_PIXELS, else MAX_PIXELS).
    ``draft_size`` lets JPEGs decode at a reduced DCT scale keeping both sides >= draft_size.
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        fp = io.BytesIO(src if isinstance(src, bytes) else bytes(src))
        return _read_stream(fp, label, _pixel_limit(max_pixels), draft_size)
    if not isinstance(src, (str, os.PathLike)):
        raise TypeError(f"read_xray expects a path or bytes, not {type(src).__name__}")
    path = os.fspath(src)
    if not isinstance(path, str):
        raise TypeError("read_xray expects a str path; bytes are read as image data")
    label = name or path
    with open_regular(path, label) as fp:
        return _read_stream(fp, label, _pixel_limit(max_pixels), draft_size)


def open_regular(path: str | os.PathLike, label: str | None = None) -> BinaryIO:
    """Open a regular file for reading, or raise ImageReadError: every file access goes through here.

    Anything else (a FIFO, a device, a socket, a folder) is refused before any byte is read: opening is
    non-blocking, so a FIFO without a writer cannot hang the caller."""
    label = label or os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ImageReadError(f"{label}: file not found") from None
    except IsADirectoryError:
        raise ImageReadError(f"{label}: is a directory") from None
    except PermissionError:
        raise ImageReadError(f"{label}: permission denied") from None
    except (OSError, ValueError) as e:
        raise ImageReadError(f"{label}: cannot open file ({getattr(e, 'strerror', None) or e})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ImageReadError(f"{label}: is a directory")
        if not stat.S_ISREG(mode):
            raise ImageReadError(f"{label}: not a regular file ({_file_kind(mode)})")
        os.set_blocking(fd, True)
        raw = io.FileIO(fd, "rb", closefd=True)
        raw.name = os.fspath(path)  # pydicom reopens deferred elements by name
        return io.BufferedReader(raw)
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "not a file")


def read_file(path: str | os.PathLike, label: str | None = None) -> bytes:
    """A regular file's bytes, or ImageReadError naming it (vanished, unreadable, not a regular file)."""
    label = label or os.fspath(path)
    with open_regular(path, label) as fp:
        try:
            return fp.read()
        except OSError as e:
            raise ImageReadError(f"{label}: cannot read file ({e.strerror or e})") from None


def decoded_pixels(data: bytes, *, draft_size: int | None = None) -> int:
    """How many pixels `read_xray(data, draft_size=...)` would decode, from the header alone; 0 when the header
    does not say (the reader then reports what is wrong with the input)."""
    fp = io.BytesIO(data)
    head = data[:_DICOM_MAGIC_OFFSET + 4]
    try:
        if head[_DICOM_MAGIC_OFFSET:] == b"DICM" or head.startswith(_RAW_DICOM_STARTS):
            ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True)
            return int(ds.get("Rows") or 0) * int(ds.get("Columns") or 0)  # the first frame alone is decoded
        fmt = next((fmt for magic, fmt in _MAGIC if head.startswith(magic)), None)
        if fmt not in _PIL_OPENERS:
            return 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = _PIL_OPENERS[fmt](fp)
            if draft_size and fmt == "JPEG":
                img.draft("L", (draft_size, draft_size))  # the reduced DCT scale read_xray decodes at
            return img.size[0] * img.size[1]
    except Exception:  # a bad header is the reader's to report, with its reason
        return 0


def max_image_pixels() -> int:
    """The size limit read_xray applies to one image (PNEUMO_ML_MAX_PIXELS, else MAX_PIXELS)."""
    return _pixel_limit(None)


def _pixel_limit(max_pixels: int | None) -> int:
    if max_pixels is not None:
        return max_pixels
    env = os.environ.get(_MAX_PIXELS_ENV)
    if env is None:
        return MAX_PIXELS
    try:
        return int(env)
    except ValueError:
        raise ValueError(f"{_MAX_PIXELS_ENV} must be an integer, got {env!r}") from None


def _read_stream(fp: BinaryIO, label: str, limit: int, draft_size: int | None) -> np.ndarray:
    try:
        head = fp.read(_DICOM_MAGIC_OFFSET + 4)
        fp.seek(0)
    except OSError as e:
        raise ImageReadError(f"{label}: cannot read file ({e})") from e
    if not head:
        raise ImageReadError(f"{label}: empty file (0 bytes)")
    if head[_DICOM_MAGIC_OFFSET:] == b"DICM":
        return _read_dicom(fp, label, limit, force=False)
    fmt = next((fmt for magic, fmt in _MAGIC if head.startswith(magic)), None)
    if fmt in _PIL_OPENERS:
        return _read_pil(fp, fmt, label, limit, draft_size)
    supported = ", ".join(SUPPORTED_FORMATS)
    if fmt is not None:
        raise ImageReadError(f"{label}: unsupported format {fmt} (supported: {supported})")
    if head.startswith(_RAW_DICOM_STARTS):
        try:
            return _read_dicom(fp, label, limit, force=True)
        except _NotDicom:
            pass
    raise ImageReadError(f"{label}: not an image (unknown format; supported: {supported})")


def _too_large(label: str, dims: tuple[int, ...], limit: int, knob: str = _MAX_PIXELS_ENV) -> ImageReadError:
    pixels = math.prod(dims)
    shape = "x".join(str(d) for d in dims)
    return ImageReadError(
        f"{label}: image too large: {shape} = {pixels:,} pixels exceeds the limit of {limit:,} ({knob})"
    )


def _decode_failure(fmt: str, e: Exception) -> str:
    text = str(e)
    if isinstance(e, EOFError) or "truncated" in text.lower():
        return f"truncated {fmt} data"
    return f"corrupt {fmt} data ({type(e).__name__}: {text})"


# ----------------------------------------------------------------------------- Pillow


def _read_pil(fp: BinaryIO, fmt: str, label: str, limit: int, draft_size: int | None) -> np.ndarray:
    img = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _PIL_OPENERS[fmt](fp)
            width, height = img.size
            if width * height > limit:
                raise _too_large(label, (width, height), limit)
            pil_limit = Image.MAX_IMAGE_PIXELS  # Pillow's own guard stays in force too
            if pil_limit is not None and width * height > pil_limit:
                raise _too_large(label, (width, height), pil_limit, "PIL.Image.MAX_IMAGE_PIXELS")
            if draft_size and fmt == "JPEG":
                img.draft("L", (draft_size, draft_size))
            ImageOps.exif_transpose(img, in_place=True)  # loads (decodes) the first frame
            return _pil_to_gray(img)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"{label}: image too large ({e})") from e
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, struct.error, ...) on bad data
        if img is None and _exhausted(fp):
            raise ImageReadError(f"{label}: truncated {fmt} header") from e
        raise ImageReadError(f"{label}: {_decode_failure(fmt, e)}") from e


def _exhausted(fp: BinaryIO) -> bool:
    try:
        return not fp.read(1)
    except Exception:
        return False


def _pil_to_gray(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _minmax_to_uint8(np.asarray(img))
    if mode == "LAB":
        img = img.getchannel("L")
    elif mode != "L":
        img = img.convert("L")  # 1-bit -> 0/255, palette/RGB(A)/LA/CMYK -> luminance, alpha ignored
    return np.array(img)  # writeable copy; np.asarray would be read-only


# ----------------------------------------------------------------------------- DICOM


class _NotDicom(Exception):
    """A lenient (preamble-less) parse found no DICOM image."""


def _read_dicom(fp: BinaryIO, label: str, limit: int, *, force: bool) -> np.ndarray:
    try:
        # defer_size leaves large values (Pixel Data) unread until the size check passed
        ds = pydicom.dcmread(fp, force=force, defer_size=4096)
        has_pixels = any(k in ds for k in _PIXEL_DATA_KEYWORDS)
        if force and not (has_pixels and "Rows" in ds and "Columns" in ds):
            raise _NotDicom
    except _NotDicom:
        raise
    except Exception as e:
        if force:
            raise _NotDicom from e
        reason = "truncated DICOM header" if _exhausted(fp) else _decode_failure("DICOM", e)
        raise ImageReadError(f"{label}: {reason}") from e
    tsyntax = None
    try:
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        frames = max(1, int(ds.get("NumberOfFrames") or 1))
        if rows * cols * frames > limit:
            raise _too_large(label, (cols, rows, frames) if frames > 1 else (cols, rows), limit)
        if not has_pixels:
            raise ImageReadError(f"{label}: DICOM has no pixel data (not an image, or truncated)")
        tsyntax = _ensure_transfer_syntax(ds)
        ds.pixel_array_options(index=0)  # decode the first frame only
        return _dicom_to_gray(ds.pixel_array, ds)
    except ImageReadError:
        raise
    except Exception as e:
        compressed = tsyntax is not None and tsyntax.is_transfer_syntax and tsyntax.is_compressed
        if compressed and isinstance(e, (RuntimeError, NotImplementedError)):
            reason = (
                f"compressed DICOM ({tsyntax.name}) needs pylibjpeg/pylibjpeg-libjpeg/"
                f"pylibjpeg-openjpeg or python-gdcm: {e}"
            )
        elif "less than expected" in str(e):
            reason = "truncated DICOM pixel data"
        else:
            reason = _decode_failure("DICOM", e)
        raise ImageReadError(f"{label}: {reason}") from e


def _ensure_transfer_syntax(ds: pydicom.Dataset) -> UID:
    """Return the transfer syntax, inferring it from the parse for files without file meta."""
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if tsyntax is None:
        implicit, little = ds.original_encoding
        tsyntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        ds.ensure_file_meta()
        ds.file_meta.TransferSyntaxUID = tsyntax
    return UID(tsyntax)


def _dicom_to_gray(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:  # colour, already RGB (pydicom converts YBR)
        luma = arr[..., :3].astype(np.float32) @ _LUMA
        return _scale_to_uint8(luma, 0, 255) if arr.dtype == np.uint8 else _minmax_to_uint8(luma)

    arr = apply_modality_lut(arr, ds)
    voi_lut = ds.get("VOILUTSequence")
    if voi_lut and "LUTDescriptor" in voi_lut[0] and "LUTData" in voi_lut[0]:
        entries, first, bits = (int(v) for v in voi_lut[0].LUTDescriptor)
        entries = entries or 2**16
        # Clip to the LUT domain first: pydicom would wrap out-of-range inputs in uint16.
        inputs = np.clip(np.rint(arr), first, first + entries - 1).astype(np.int32)
        out = _scale_to_uint8(apply_voi(inputs, ds), 0, 2**bits - 1)
    elif (window := _window(ds)) is not None:
        out = _apply_window(arr, *window)
    else:
        out = _minmax_to_uint8(arr)
    if photometric == "MONOCHROME1":
        np.subtract(255, out, out=out)
    return out


def _window(ds: pydicom.Dataset) -> tuple[float, float, str] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center in (None, "") or width in (None, ""):
        return None
    center = float(center[0] if isinstance(center, MultiValue) else center)
    width = float(width[0] if isinstance(width, MultiValue) else width)
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if width <= 0 or not np.isfinite(center + width):
        return None
    return center, width, function


def _apply_window(arr: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing straight to 0..255."""
    x = arr.astype(np.float32)
    if function == "SIGMOID":
        with np.errstate(over="ignore"):  # exp overflow -> inf -> 0 is the right limit
            y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        y = (x - center) / width + 0.5
    else:  # LINEAR (default); a width of 1 degenerates to a threshold
        y = (x - (center - 0.5)) / max(width - 1.0, 1e-3) + 0.5
    return _scale_to_uint8(y, 0.0, 1.0)


# ----------------------------------------------------------------------------- scaling


def _minmax_to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        finite = arr[np.isfinite(arr)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        arr = np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)
    return _scale_to_uint8(arr, arr.min(), arr.max())


def _scale_to_uint8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] linearly onto 0..255 with clipping; a constant range gives zeros."""
    lo, hi = float(lo), float(hi)
    if not hi > lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    # float64 only where float32 could overflow (e.g. float TIFFs near 3e38)
    dtype = np.float64 if hi - lo > 1e30 else np.float32
    out = np.subtract(arr, lo, dtype=dtype)
    out *= 255.0 / (hi - lo)
    np.clip(out, 0.0, 255.0, out=out)
    out += 0.5
    return np.ascontiguousarray(out.astype(np.uint8))
