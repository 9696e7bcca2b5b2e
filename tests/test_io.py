"""Tests for pneumo_ml.io.read_xray; every fixture is generated in tmp_path."""

from __future__ import annotations

import io
import resource
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, SecondaryCaptureImageStorage, generate_uid

from pneumo_ml.io import MAX_PIXELS, SUPPORTED_FORMATS, ImageReadError, read_xray

SAMPLES = Path(__file__).parent.parent / "pneumo_ml" / "samples"
SAMPLE_FILES = sorted(SAMPLES.glob("*/*.jpeg"))
RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- helpers


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def write(tmp_path: Path, filename: str, data: bytes) -> Path:
    path = tmp_path / filename
    path.write_bytes(data)
    return path


def check_output(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == shape
    assert arr.flags.c_contiguous and arr.flags.writeable


def noise(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w), dtype=np.uint8)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zero_png(width: int, height: int, rows_per_block: int = 1000) -> bytes:
    """Minimal valid 8-bit grayscale PNG of zeros, compressed in a stream (a decompression bomb)."""
    compressor = zlib.compressobj(9, strategy=zlib.Z_RLE)
    block = bytes((width + 1) * rows_per_block)  # filter byte 0 + zero pixels per row
    full, rest = divmod(height, rows_per_block)
    idat = [compressor.compress(block) for _ in range(full)]
    idat += [compressor.compress(bytes((width + 1) * rest)), compressor.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"".join(idat))
        + png_chunk(b"IEND", b"")
    )


def make_dicom(
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    rows: int | None = None,
    columns: int | None = None,
    preamble: bool = True,
    **attrs,
) -> bytes:
    """An uncompressed 16-bit DICOM; `pixels` is (rows, cols) or (frames, rows, cols)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if pixels is not None:
        if pixels.ndim == 3:
            ds.NumberOfFrames = pixels.shape[0]
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.PixelData = pixels.astype("<u2").tobytes()
    if rows is not None:
        ds.Rows, ds.Columns = rows, columns
    for key, value in attrs.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    if preamble:
        ds.save_as(buf, enforce_file_format=True)
    else:  # bare data set: no preamble, no "DICM", no file meta
        del ds.file_meta
        ds.save_as(buf, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def raises_read_error(src, *parts: str, **kw) -> str:
    with pytest.raises(ImageReadError) as info:
        read_xray(src, **kw)
    message = str(info.value)
    for part in parts:
        assert part in message, message
    return message


# ----------------------------------------------------------------------------- real samples


def test_sample_radiographs_present():
    assert len(SAMPLE_FILES) >= 4


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_sample_radiograph_decodes(path):
    width, height = Image.open(path).size
    arr = read_xray(path)
    check_output(arr, (height, width))
    assert arr.std() > 10  # a real image, not padding


def test_draft_size_shrinks_jpeg_but_keeps_both_sides():
    path = SAMPLE_FILES[0]
    width, height = Image.open(path).size
    arr = read_xray(path, draft_size=224)
    assert 224 <= arr.shape[0] < height and 224 <= arr.shape[1] < width
    assert arr.shape[0] / arr.shape[1] == pytest.approx(height / width, rel=0.02)
    assert arr.flags.c_contiguous


def test_draft_size_ignored_for_png():
    data = encode(Image.fromarray(noise(600, 500)), "PNG")
    assert read_xray(data, draft_size=100).shape == (600, 500)


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_8bit_gray_is_exact(tmp_path, fmt):
    src = noise(37, 53)
    path = write(tmp_path, f"img.{fmt.lower()}", encode(Image.fromarray(src), fmt))
    arr = read_xray(path)
    check_output(arr, src.shape)
    np.testing.assert_array_equal(arr, src)


def test_jpeg_gray_close_to_source():
    src = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    arr = read_xray(encode(Image.fromarray(src), "JPEG", quality=95))
    check_output(arr, src.shape)
    assert np.abs(arr.astype(int) - src).mean() < 2


def test_rgb_jpeg_becomes_luminance():
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :16, 0] = 255
    rgb[:, 16:32, 1] = 255
    rgb[:, 32:, 2] = 255
    arr = read_xray(encode(Image.fromarray(rgb), "JPEG", quality=95))
    check_output(arr, (32, 48))
    for cols, luma in ((slice(2, 14), 76), (slice(18, 30), 150), (slice(34, 46), 29)):
        assert abs(float(arr[4:28, cols].mean()) - luma) < 6


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_ramp_is_minmax_scaled(fmt):
    ramp = np.linspace(1000, 40000, 64 * 32).astype(np.uint16).reshape(32, 64)
    img = Image.fromarray(ramp)
    assert img.mode == "I;16"
    arr = read_xray(encode(img, fmt))
    check_output(arr, ramp.shape)
    assert arr[0, 0] == 0 and arr[-1, -1] == 255
    assert np.all(np.diff(arr.ravel().astype(int)) >= 0)
    expected = np.rint((ramp - 1000.0) * 255 / 39000).astype(np.uint8)
    assert np.abs(arr.astype(int) - expected).max() <= 1


@pytest.mark.parametrize(
    "array",
    [np.arange(-600, 600, dtype=np.int32).reshape(30, 40), np.linspace(-1, 1, 1200, dtype=np.float32).reshape(30, 40)],
    ids=["int32", "float32"],
)
def test_32bit_tiff_is_minmax_scaled(array):
    arr = read_xray(encode(Image.fromarray(array), "TIFF"))
    check_output(arr, (30, 40))
    assert arr[0, 0] == 0 and arr[-1, -1] == 255


@pytest.mark.parametrize("value", [0, 1234], ids=["zeros", "constant"])
def test_constant_16bit_gives_zeros_without_warning(value, recwarn):
    arr = read_xray(encode(Image.fromarray(np.full((8, 8), value, np.uint16)), "PNG"))
    check_output(arr, (8, 8))
    assert not arr.any()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_float_tiff_with_nan_and_inf():
    src = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    src[0, 0], src[0, 1], src[0, 2] = np.nan, np.inf, -np.inf
    arr = read_xray(encode(Image.fromarray(src), "TIFF"))
    assert arr[0, 1] == 255 and arr[0, 2] == 0 and arr[-1, -1] == 255


def test_palette_png_maps_through_palette():
    indices = (np.arange(64).reshape(8, 8) % 4).astype(np.uint8)
    img = Image.fromarray(indices, "L").convert("P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 255, 255, 255] + [0] * (256 - 4) * 3)
    arr = read_xray(encode(img, "PNG"))
    check_output(arr, (8, 8))
    np.testing.assert_array_equal(arr, np.array([0, 76, 150, 255], np.uint8)[indices])


def test_rgba_png_ignores_alpha():
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :6, 3] = 0  # fully transparent half still reads as its colour
    rgba[:, 6:, 3] = 255
    arr = read_xray(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    check_output(arr, (10, 12))
    assert (arr == 200).all()


def test_la_png_ignores_alpha():
    la = np.stack([np.full((5, 6), 90, np.uint8), np.zeros((5, 6), np.uint8)], axis=-1)
    assert (read_xray(encode(Image.fromarray(la, "LA"), "PNG")) == 90).all()


def test_1bit_png_is_0_or_255():
    bits = np.indices((8, 8)).sum(axis=0) % 2 == 0
    arr = read_xray(encode(Image.fromarray(bits), "PNG"))
    check_output(arr, (8, 8))
    np.testing.assert_array_equal(arr, np.where(bits, 255, 0))


def test_multiframe_tiff_returns_first_frame():
    first, second = Image.fromarray(np.full((6, 7), 10, np.uint8)), Image.fromarray(np.full((6, 7), 99, np.uint8))
    arr = read_xray(encode(first, "TIFF", save_all=True, append_images=[second]))
    assert (arr == 10).all()


@pytest.mark.parametrize("draft_size", [None, 100])
@pytest.mark.parametrize(
    ("orientation", "marker_corner"),
    [(1, "top_left"), (3, "bottom_right"), (6, "top_right"), (8, "bottom_left")],
)
def test_exif_orientation_applied(orientation, marker_corner, draft_size):
    height, width = 400, 800  # stored landscape; orientations 6/8 display portrait
    src = np.full((height, width), 20, np.uint8)
    src[:100, :100] = 250  # bright marker, stored top-left
    exif = Image.Exif()
    exif[0x0112] = orientation
    arr = read_xray(encode(Image.fromarray(src), "JPEG", quality=95, exif=exif), draft_size=draft_size)
    h, w = arr.shape
    expected_shape = (width, height) if orientation in (6, 8) else (height, width)
    if draft_size:
        assert min(h, w) >= draft_size and h * expected_shape[1] == w * expected_shape[0]
    else:
        assert (h, w) == expected_shape
    q = min(h, w) // 16  # well inside the marker block, whatever the scale
    corners = {
        "top_left": arr[:q, :q],
        "top_right": arr[:q, -q:],
        "bottom_left": arr[-q:, :q],
        "bottom_right": arr[-q:, -q:],
    }
    for corner, patch in corners.items():
        assert (patch.mean() > 200) == (corner == marker_corner), corner


def test_bytes_input_equals_path_input(tmp_path):
    for filename, data in [
        ("a.jpeg", SAMPLE_FILES[-1].read_bytes()),
        ("a.png", encode(Image.fromarray(noise(20, 30)), "PNG")),
        ("a.dcm", make_dicom(np.arange(600, dtype=np.uint16).reshape(20, 30))),
    ]:
        from_path = read_xray(write(tmp_path, filename, data))
        for src in (data, bytearray(data), memoryview(data)):
            np.testing.assert_array_equal(read_xray(src), from_path)
        np.testing.assert_array_equal(read_xray(str(tmp_path / filename)), from_path)


# ----------------------------------------------------------------------------- DICOM


def bone_phantom(high_is_bone: bool) -> np.ndarray:
    """A 12-bit image whose centre block is 'bone' (dense)."""
    pixels = np.full((40, 50), 1000, np.uint16)
    pixels[10:30, 15:35] = 3500
    return pixels if high_is_bone else 4095 - pixels


def test_dicom_monochrome2():
    arr = read_xray(make_dicom(bone_phantom(high_is_bone=True)))
    check_output(arr, (40, 50))
    assert arr[20, 25] == 255 and arr[0, 0] == 0


def test_dicom_monochrome1_same_pixels_inverted():
    pixels = bone_phantom(high_is_bone=True)
    mono2 = read_xray(make_dicom(pixels))
    mono1 = read_xray(make_dicom(pixels, photometric="MONOCHROME1"))
    check_output(mono1, (40, 50))
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_dicom_bone_bright_in_both_photometrics():
    mono2 = read_xray(make_dicom(bone_phantom(high_is_bone=True)))
    mono1 = read_xray(make_dicom(bone_phantom(high_is_bone=False), photometric="MONOCHROME1"))
    for arr in (mono1, mono2):
        assert arr[20, 25] > arr[0, 0] + 200
    np.testing.assert_array_equal(mono1, mono2)


def test_dicom_window_clips_outside_values():
    pixels = np.array([[0, 1500, 2000, 2500, 4000]], np.uint16)
    arr = read_xray(make_dicom(pixels, WindowCenter=2000, WindowWidth=1001))
    assert arr[0, 0] == 0 and arr[0, 1] == 0
    assert abs(int(arr[0, 2]) - 128) <= 1
    assert arr[0, 3] == 255 and arr[0, 4] == 255


def test_dicom_window_multivalue_uses_first():
    pixels = np.array([[0, 2000, 4000]], np.uint16)
    arr = read_xray(make_dicom(pixels, WindowCenter=[2000, 100], WindowWidth=[1000, 50]))
    assert arr.tolist() == [[0, 128, 255]]


def test_dicom_window_monochrome1_inverts_after_windowing():
    pixels = np.array([[0, 4000]], np.uint16)
    arr = read_xray(make_dicom(pixels, photometric="MONOCHROME1", WindowCenter=2000, WindowWidth=1000))
    assert arr.tolist() == [[255, 0]]


def test_dicom_rescale_applied_before_window():
    # Stored 0..4095 -> HU-like -1024..7166; window +/-1000 around 0 HU.
    pixels = np.array([[0, 512, 1100, 4095]], np.uint16)
    attrs = dict(RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=2000)
    arr = read_xray(make_dicom(pixels, **attrs))
    assert arr[0, 0] == 0  # -1024 HU, below window
    assert abs(int(arr[0, 1]) - 128) <= 1  # 0 HU, the centre; unrescaled 512 would be ~193
    assert arr[0, 2] == 255 and arr[0, 3] == 255


def test_dicom_rescale_without_window_is_minmax():
    pixels = np.array([[100, 200, 300]], np.uint16)
    arr = read_xray(make_dicom(pixels, RescaleSlope=-1, RescaleIntercept=0))
    assert arr.tolist() == [[255, 128, 0]]  # negative slope reverses the order


def test_dicom_voi_lut_sequence():
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [256, 0, 8])
    item.add_new("LUTData", "US", [255 - i for i in range(256)])  # inverting LUT
    pixels = np.array([[0, 100, 255, 3000]], np.uint16)  # 3000 lies past the LUT: last entry
    arr = read_xray(make_dicom(pixels, VOILUTSequence=[item], WindowCenter=5, WindowWidth=2))
    assert arr.tolist() == [[255, 155, 0, 0]]


def test_dicom_multiframe_returns_first_frame():
    frames = np.stack([np.full((6, 7), v, np.uint16) for v in (0, 4000)])
    frames[0, 0, 0] = 4000
    arr = read_xray(make_dicom(frames))
    check_output(arr, (6, 7))
    assert arr[0, 0] == 255 and arr[1:, :].max() == 0


def test_dicom_without_preamble_or_file_meta(tmp_path):
    pixels = bone_phantom(high_is_bone=True)
    data = make_dicom(pixels, preamble=False)
    assert data[128:132] != b"DICM" and data[:2] == b"\x08\x00"
    np.testing.assert_array_equal(read_xray(write(tmp_path, "raw.dcm", data)), read_xray(make_dicom(pixels)))


def test_dicom_detected_by_content_not_extension(tmp_path):
    arr = read_xray(write(tmp_path, "scan.png", make_dicom(bone_phantom(True))))
    assert arr.shape == (40, 50)


def test_dicom_without_pixel_data(tmp_path):
    path = write(tmp_path, "sr.dcm", make_dicom(None))
    raises_read_error(path, str(path), "no pixel data")


def test_dicom_truncated_pixel_data():
    data = make_dicom(bone_phantom(True))
    raises_read_error(data[:-500], "<bytes>: truncated DICOM")


def test_compressed_dicom_without_decoder_names_plugins():
    data = bytearray(make_dicom(np.zeros((4, 4), np.uint16)))
    ds = pydicom.dcmread(io.BytesIO(bytes(data)))
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xf7" + bytes(60) + b"\xff\xd9"])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raises_read_error(buf.getvalue(), "compressed DICOM (JPEG-LS", "pylibjpeg", name="row 3")


# ----------------------------------------------------------------------------- errors


def test_error_is_value_error():
    assert issubclass(ImageReadError, ValueError)
    assert SUPPORTED_FORMATS == ("JPEG", "PNG", "BMP", "TIFF", "DICOM")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpeg"
    assert raises_read_error(path) == f"{path}: file not found"


def test_directory(tmp_path):
    assert raises_read_error(tmp_path) == f"{tmp_path}: is a directory"


def test_unreadable_file(tmp_path, monkeypatch):
    path = write(tmp_path, "locked.png", encode(Image.fromarray(noise(4, 4)), "PNG"))

    def denied(*args, **kwargs):  # chmod 000 would not stop root, who runs CI containers
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("pneumo_ml.io.os.open", denied)  # every read opens through os.open (non-blocking)
    assert raises_read_error(path) == f"{path}: permission denied"


def test_empty_file(tmp_path):
    path = write(tmp_path, "empty.jpeg", b"")
    assert raises_read_error(path) == f"{path}: empty file (0 bytes)"
    assert raises_read_error(b"") == "<bytes>: empty file (0 bytes)"


def test_non_image(tmp_path):
    path = write(tmp_path, "notes.jpeg", b"patient id,label\n1,NORMAL\n" * 20)
    message = raises_read_error(path, str(path), "not an image", "unknown format")
    assert all(fmt in message for fmt in SUPPORTED_FORMATS)


def test_unsupported_known_format():
    gif = encode(Image.fromarray(noise(8, 8)), "GIF")
    raises_read_error(gif, "<bytes>: unsupported format GIF", "supported: JPEG, PNG, BMP, TIFF, DICOM")


def test_name_labels_errors(tmp_path):
    assert raises_read_error(b"junk", name="row 3").startswith("row 3: not an image")
    assert raises_read_error(tmp_path / "gone.png", name="row 4") == "row 4: file not found"


def test_str_is_always_a_path():
    raises_read_error("\x89PNG\r\n\x1a\n", "file not found")


def test_wrong_type_is_type_error():
    with pytest.raises(TypeError):
        read_xray(3)  # an int would otherwise open a file descriptor


@pytest.fixture(scope="module")
def valid_images() -> dict[str, bytes]:
    return {
        "JPEG": encode(Image.fromarray(noise(64, 80)), "JPEG", quality=90),
        "PNG": encode(Image.fromarray(noise(64, 80)), "PNG"),
        "BMP": encode(Image.fromarray(noise(16, 20)), "BMP"),
        "TIFF": encode(Image.fromarray(noise(16, 20)), "TIFF"),
        "TIFF16": encode(Image.fromarray(noise(16, 20).astype(np.uint16) * 200), "TIFF"),
        "DICOM": make_dicom(bone_phantom(True)),
        "RAW_DICOM": make_dicom(bone_phantom(True), preamble=False),
    }


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.3, 0.5, 0.9, 0.99])
def test_truncated_images_raise(valid_images, tmp_path, fmt, fraction):
    data = valid_images[fmt]
    path = write(tmp_path, "cut.img", data[: int(len(data) * fraction)])
    raises_read_error(path, str(path), "truncated", fmt)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the cut EXIF first
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "TIFF"])
def test_every_cut_point_raises_truncated(valid_images, fmt):
    data = valid_images[fmt]
    end = len(data) - 20 if fmt == "PNG" else len(data)  # Pillow needs neither the last CRC nor IEND
    for cut in range(8, end, 11):
        raises_read_error(data[:cut], f"<bytes>: truncated {fmt}")


def test_jpeg_cut_in_half_does_not_pad_silently():
    data = SAMPLE_FILES[0].read_bytes()
    raises_read_error(data[: len(data) // 2], "<bytes>: truncated JPEG data")


# ----------------------------------------------------------------------------- size limits


@pytest.fixture(scope="module")
def png_bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(zero_png(30_000, 30_000))
    assert path.stat().st_size < 2_000_000
    return path


@pytest.fixture(scope="module")
def dicom_bombs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("dicom_bomb")
    tiny = make_dicom(np.zeros((2, 2), np.uint16), rows=30_000, columns=30_000)
    # Same header, but Pixel Data declares its full 1.8 GB length (file cut short)
    pixel_tag = b"\xe0\x7f\x10\x00OW\x00\x00"
    at = tiny.index(pixel_tag) + len(pixel_tag)
    declared = tiny[:at] + struct.pack("<I", 30_000 * 30_000 * 2) + tiny[at + 4 :]
    absent = make_dicom(None, rows=30_000, columns=30_000)
    bombs = {"tiny.dcm": tiny, "declared.dcm": declared, "absent.dcm": absent}
    for name, data in bombs.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in bombs]


def refuse_quickly(src, **kw) -> str:
    """Assert `src` is refused as too large in well under a second without allocating the image."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ImageReadError, match="image too large") as info:
        read_xray(src, **kw)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert elapsed < 0.5
    assert peak < 50_000_000
    assert rss_growth < 50_000
    return str(info.value)


def test_png_bomb_refused_before_decoding(png_bomb):
    message = refuse_quickly(png_bomb)
    assert message == (
        f"{png_bomb}: image too large: 30000x30000 = 900,000,000 pixels exceeds the limit of "
        "50,000,000 (PNEUMO_ML_MAX_PIXELS)"
    )
    assert "image too large: 30000x30000" in refuse_quickly(png_bomb.read_bytes())


def test_pillow_guard_still_applies_when_limit_raised(png_bomb):
    message = refuse_quickly(png_bomb, max_pixels=10**12)
    assert message.endswith(f"exceeds the limit of {Image.MAX_IMAGE_PIXELS:,} (PIL.Image.MAX_IMAGE_PIXELS)")


def test_dicom_bombs_refused_before_reading_pixels(dicom_bombs):
    for path in dicom_bombs:
        message = refuse_quickly(path)
        assert message.startswith(f"{path}: image too large: 30000x30000 = 900,000,000 pixels"), message


def test_dicom_frames_count_towards_limit():
    frames = np.zeros((5, 10, 10), np.uint16)
    raises_read_error(make_dicom(frames), "10x10x5 = 500 pixels", "limit of 499", max_pixels=499)
    assert read_xray(make_dicom(frames), max_pixels=500).shape == (10, 10)


def test_env_limit_read_at_call_time(monkeypatch):
    data = encode(Image.fromarray(noise(20, 30)), "PNG")
    assert MAX_PIXELS == 50_000_000
    monkeypatch.setenv("PNEUMO_ML_MAX_PIXELS", "599")
    raises_read_error(data, "30x20 = 600 pixels exceeds the limit of 599 (PNEUMO_ML_MAX_PIXELS)")
    assert read_xray(data, max_pixels=600).shape == (20, 30)  # argument beats env
    monkeypatch.setenv("PNEUMO_ML_MAX_PIXELS", "600")
    assert read_xray(data).shape == (20, 30)


def test_invalid_env_limit_is_a_config_error(monkeypatch):
    monkeypatch.setenv("PNEUMO_ML_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="PNEUMO_ML_MAX_PIXELS must be an integer"):
        read_xray(encode(Image.fromarray(noise(2, 2)), "PNG"))


def test_module_default_limit_applies(monkeypatch):
    monkeypatch.delenv("PNEUMO_ML_MAX_PIXELS", raising=False)
    monkeypatch.setattr("pneumo_ml.io.MAX_PIXELS", 100)
    raises_read_error(encode(Image.fromarray(noise(11, 10)), "BMP"), "110 pixels", "limit of 100")


# ----------------------------------------------------------------------------- fuzzing


def read_or_refuse(data: bytes) -> None:
    try:
        arr = read_xray(data)
    except ImageReadError as e:
        assert str(e).startswith("<bytes>: ")
    else:
        assert arr.dtype == np.uint8 and arr.ndim == 2 and arr.flags.c_contiguous


MAGICS = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"\x08\x00", b"\x02\x00"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Pillow and pydicom warn about the damage before failing; expected here.
quiet = pytest.mark.filterwarnings("ignore::UserWarning")


@quiet
@FUZZ
@given(
    st.one_of(
        st.binary(max_size=600),
        st.tuples(st.sampled_from(MAGICS), st.binary(max_size=400)).map(b"".join),  # past the format sniffing
        st.binary(min_size=132, max_size=400).map(lambda b: b[:128] + b"DICM" + b[132:]),
    )
)
def test_fuzz_arbitrary_bytes(data):
    read_or_refuse(data)


@quiet
@FUZZ
@given(
    fmt=st.sampled_from(["JPEG", "PNG", "BMP", "TIFF", "TIFF16", "DICOM", "RAW_DICOM"]),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=4),
)
def test_fuzz_mutated_valid_images(valid_images, fmt, cut, flips):
    data = bytearray(valid_images[fmt])
    for where, value in flips:
        data[int(where * len(data))] = value
    read_or_refuse(bytes(data[: max(1, int(len(data) * cut))]))
