"""Object storage and image files at the edge of the system (fsspec + Pillow).

Any fsspec URL works: a local path, ``file://``, ``s3://`` (s3fs; an endpoint through
``storage_options={"endpoint_url": ...}`` or AWS_ENDPOINT_URL, as for any s3fs program), ``gs://``...

Two kinds of error are kept apart:
- `StorageError`: the storage failed (network, throttling, permissions); retrying may help.
- `BadInput`: the file itself is unusable (empty, truncated, not an image, wrong size); retrying
  never helps, the image gets a failed row naming the file and the reason.

Writes are single writes, so writing the same key twice (a retried shard) overwrites and never leaves
a half-written or duplicate object: one PUT on object stores, a temporary file + ``os.replace`` on a
local disk.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import time
import zlib

import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MASK_EXTENSIONS = (".png", ".npy")


class StorageError(OSError):
    """A storage operation failed for a reason that retrying may fix (network, throttling, auth)."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


class BadInput(ValueError):
    """An input file that cannot be used: ``str(e) == "name: reason"``."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


# ----------------------------------------------------------------------------- storage


def filesystem(url: str, storage_options: dict | None = None):
    """``(fs, path)`` for an fsspec URL; instances are cached by fsspec per (protocol, options)."""
    import fsspec

    if not isinstance(url, str) or not url:
        raise ValueError(f"url must be a non-empty string, got {url!r}")
    return fsspec.core.url_to_fs(url, **(storage_options or {}))


def join(url: str, *parts: str) -> str:
    """Join URL parts with ``/``: ``join("s3://b/out", "images", "a/b.png") == "s3://b/out/images/a/b.png"``."""
    out = url.rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _with_retries(url: str, fn, attempts: int = 3):
    """Run `fn`; transient storage failures are retried with a short backoff.

    A missing object raises FileNotFoundError at once; permission and path-shape errors become a
    StorageError at once (retrying cannot fix them); anything else is retried, then a StorageError.
    """
    for i in range(attempts):
        try:
            return fn()
        except (FileNotFoundError, BadInput):
            raise
        except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as e:
            raise StorageError(url, f"{type(e).__name__}: {e}") from e
        except Exception as e:  # botocore / aiohttp / OSError: all storage-side
            if i == attempts - 1:
                raise StorageError(url, f"{type(e).__name__}: {e}") from e
            time.sleep(0.25 * 2**i)
    raise AssertionError("unreachable")


def read_bytes(url: str, storage_options: dict | None = None) -> bytes:
    """The whole object at `url`. Raises FileNotFoundError if it does not exist, StorageError else."""
    fs, path = filesystem(url, storage_options)
    return _with_retries(url, lambda: fs.cat_file(path))


def exists(url: str, storage_options: dict | None = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return bool(_with_retries(url, lambda: fs.exists(path)))


def write_bytes(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write `data` to `url` in one write (one PUT, or temp file + os.replace), overwriting."""
    fs, path = filesystem(url, storage_options)
    if _is_local(fs):
        _with_retries(url, lambda: _write_local(path, data))
    else:
        _with_retries(url, lambda: fs.pipe_file(path, data))


def _write_local(path: str, data: bytes) -> None:
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path)[-32:])
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- images


def decode_image(data: bytes, name: str, *, channels: int | None = None) -> torch.Tensor:
    """Decode png / jpg / jpeg / webp / bmp / tif bytes into a float tensor ``(C, H, W)`` in ``[0, 1]``.

    EXIF orientation is applied. Grey (and 1-bit) images give C = 1, colour images C = 3; an alpha
    channel is dropped; palette, CMYK and YCbCr images are converted to RGB. 16-bit grey images keep
    their precision (divided by 65535).
    `channels` (1 or 3) forces the channel count: grey -> 3 repeats the plane, colour -> 1 uses
    ITU-R 601 luma (Pillow's ``convert("L")``).
    Raises:
        BadInput: ``"name: reason"`` for an empty file, a file that is not an image, truncated or
            corrupt image data, or an image too large to decode safely.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
    if not data:
        raise BadInput(name, "empty file")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        img = ImageOps.exif_transpose(img)
    except UnidentifiedImageError:
        raise BadInput(name, "not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise BadInput(name, f"image too large ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise BadInput(name, f"truncated or corrupt image data ({e})") from None
    arr = _to_array(img)  # (H, W) or (H, W, 3) float32 in [0, 1]
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise BadInput(name, "image has zero size")
    x = torch.from_numpy(np.ascontiguousarray(arr))
    if channels == 3 and x.shape[0] == 1:
        x = x.expand(3, -1, -1).contiguous()
    elif channels == 1 and x.shape[0] == 3:
        w = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        x = (x * w).sum(0, keepdim=True)
    return x


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
    """A mask file (``.png``/any image, or ``.npy``) -> float tensor ``(1, H, W)`` with values in {0, 1}.

    Image masks are thresholded at 0.5 of their grey value; ``.npy`` masks are 2-D arrays (or
    ``(1, H, W)``), non-zero = 1. Raises BadInput naming the file.
    """
    if name.lower().endswith(".npy"):
        if not data:
            raise BadInput(name, "empty file")
        try:
            a = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as e:
            raise BadInput(name, f"not a valid .npy array ({type(e).__name__}: {e})") from None
        a = np.asarray(a)
        if a.ndim == 3 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 2:
            raise BadInput(name, f"mask must be 2-D (H, W), got shape {tuple(a.shape)}")
        return torch.from_numpy((a != 0).astype(np.float32))[None]
    m = decode_image(data, name, channels=1)
    return (m > 0.5).to(torch.float32)


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
