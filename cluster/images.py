"""Image and mask files at the edge of the system: decode to tensors, encode PNGs (Pillow).

`BadInput` is the error of an unusable file (empty, truncated, not an image, wrong size): retrying never
helps, and the image gets a failed row naming the file and the reason.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
"""What a folder listing takes as inputs (any case)."""


class BadInput(ValueError):
    """An input file that cannot be used: ``str(e) == "name: reason"``."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def is_image_key(key: str) -> bool:
    return key.lower().endswith(IMAGE_EXTENSIONS)


def decode_image(data: bytes, name: str) -> torch.Tensor:
    """The pixels of :func:`decode_image_meta`: a float tensor ``(C, H, W)`` in ``[0, 1]``."""
    return decode_image_meta(data, name)[0]


def decode_image_meta(data: bytes, name: str, *, max_pixels: int | None = None):
    """Decode png / jpg / jpeg / webp / bmp / tif bytes -> (float tensor ``(C, H, W)`` in ``[0, 1]``,
    ``cluster.archival.ImageMeta``: bit depth, source profile, EXIF, XMP).

    EXIF orientation is applied. Grey (and 1-bit) images give C = 1, colour images C = 3; an alpha
    channel is dropped; palette, CMYK and YCbCr images are converted to RGB. 16-bit grey images keep
    their precision (divided by 65535), and so do 16-bit RGB PNGs and TIFFs (``cluster.archival``).
    An embedded ICC profile is converted to sRGB (the prior's space).
    Channels are converted for the task and model by ``ddnm.restoration.Task.prepare``.
    max_pixels: a larger image (width x height from its header) is refused before it is decoded;
    Pillow's own guard refuses headers above ``2 * PIL.Image.MAX_IMAGE_PIXELS`` whatever it is.
    Raises:
        BadInput: ``"name: reason"`` for an empty file, a file that is not an image, truncated or
            corrupt image data, or an image too large to decode safely.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise BadInput(name, "empty file")
    from cluster import archival

    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if max_pixels is not None and w * h > max_pixels:
            raise BadInput(name, f"image too large: {w}x{h} = {w * h / 1e6:.1f} MP, above the job's "
                           f"max_pixels {max_pixels / 1e6:g} MP (read from its header, not decoded; "
                           "raise --max-pixels to restore it on tiles)")
        img.load()
        orientation = img.getexif().get(0x0112, 1)
        rgb16 = _rgb16(data, img)
        icc, xmp = img.info.get("icc_profile"), img.info.get("xmp") or img.info.get("XML:com.adobe.xmp")
        img = ImageOps.exif_transpose(img)
        exif = img.getexif()
        exif = exif.tobytes().removeprefix(archival.EXIF_HEADER) if len(exif) else None
    except BadInput:
        raise
    except UnidentifiedImageError:
        raise BadInput(name, "not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise BadInput(name, f"image too large: its header claims more pixels than can be decoded "
                             f"safely, not decoded ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as e:
        raise BadInput(name, f"truncated or corrupt image data ({e})") from None
    note = ""
    if rgb16 is not None:
        arr = archival.orient(rgb16, orientation).astype(np.float64) / 65535.0
        if icc:
            converted = archival.icc_to_srgb_float(arr, icc)
            if converted is None:  # a LUT profile: ImageCms works at 8 bits
                arr = np.asarray(archival.icc_to_srgb_8bit(Image.fromarray(
                    np.rint(arr * 255).astype(np.uint8), "RGB"), icc), np.float64) / 255.0
                note = " (converted at 8 bits: not a matrix-shaper profile)"
            else:
                arr = converted
        arr = arr.astype(np.float32)
    else:
        if icc and img.mode not in ("1", "L", "LA", "La", "I", "F") and not img.mode.startswith("I;16"):
            try:
                img = archival.icc_to_srgb_8bit(img, icc)
            except Exception as e:  # a broken profile: keep the pixels, say so in the row
                note = f" (not converted: {str(e).splitlines()[0][:100]})"
        arr = _to_array(img)  # (H, W) or (H, W, 3) float32 in [0, 1]
    bits = 16 if rgb16 is not None or img.mode.startswith("I") else 8
    meta = archival.ImageMeta(bits=bits, exif=exif, xmp=xmp if isinstance(xmp, bytes) else
                              (xmp.encode() if xmp else None),
                              icc_profile=archival.profile_description(icc) + note if icc else None)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise BadInput(name, "image has zero size")
    return torch.from_numpy(np.ascontiguousarray(arr)), meta


def _rgb16(data: bytes, img) -> np.ndarray | None:
    """(H, W, 3) uint16 when the file is a 16-bit RGB PNG or TIFF (Pillow reads those as 8-bit)."""
    from cluster import archival

    if img.mode != "RGB":
        return None
    if img.format == "PNG" and archival.png_header(data) in ((16, 2), (16, 6)):
        return archival.decode_png16(data)
    if img.format == "TIFF" and 16 in tuple(getattr(img, "tag_v2", {}).get(258, ()) or ()):
        return archival.decode_tiff16(data)
    return None


def _to_array(img) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        return np.clip(a / 65535.0, 0.0, 1.0).astype(np.float32)
    if mode == "F":
        return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    if mode in ("1", "L", "LA", "La"):
        img = img.convert("L")
    elif mode != "RGB":
        img = img.convert("RGB")  # RGBA, P, CMYK, YCbCr, ...: alpha dropped
    return np.asarray(img, dtype=np.float32) / 255.0


def decode_mask(data: bytes, name: str) -> torch.Tensor:
    """A per-image mask file (PNG or ``.npy``, read by ``ddnm.operators.read_mask``: PNG grey > 127
    keeps) -> float tensor ``(1, H, W)`` of 0/1. Raises BadInput naming the file."""
    from ddnm.operators import read_mask

    try:
        m = read_mask(data, name)
    except ValueError as e:
        raise BadInput(name, str(e).removeprefix(f"mask {name}: ")) from None
    if m.shape[0] != 1 or m.shape[1] != 1:
        raise BadInput(name, f"mask must be one 2-D (H, W) plane, got shape {tuple(m.shape)}")
    return m[0].to(torch.float32)


def encode_png(image: torch.Tensor, *, bits: int = 8) -> bytes:
    """Encode ``(C, H, W)`` (C = 1 or 3) float in ``[0, 1]`` (values outside are clamped) as PNG bytes.

    ``bits=8`` (default) or ``bits=16`` for 16-bit samples.
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits!r}")
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be (C, H, W) with C in (1, 3), got shape {tuple(image.shape)}")
    x = image.detach().to("cpu", torch.float32).clamp(0, 1).numpy()
    if bits == 16:
        return _png16(np.rint(x * 65535.0).astype(">u2"))
    from PIL import Image

    a = np.rint(x * 255.0).astype(np.uint8)
    img = Image.fromarray(a[0], "L") if a.shape[0] == 1 else Image.fromarray(a.transpose(1, 2, 0), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _png16(a: np.ndarray) -> bytes:
    """A 16-bit grey or RGB PNG from a big-endian uint16 array (C, H, W) (Pillow cannot write RGB48)."""
    c, h, w = a.shape
    rows = a.transpose(1, 2, 0).reshape(h, w * c)
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(h))  # filter type 0 per row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    color_type = 0 if c == 1 else 2
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(
        b"IEND", b""
    )
