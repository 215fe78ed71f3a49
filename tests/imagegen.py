"""Small generated images in every form the embedding pipelines must handle."""
from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """An RGB image with gradients, edges and texture (so resampling
    differences would show)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([xx / max(w - 1, 1) * 255, yy / max(h - 1, 1) * 255, (xx + yy) % 64 * 4], -1)
    for _ in range(6):
        x0, y0 = rng.integers(0, max(w, 1)), rng.integers(0, max(h, 1))
        a[y0:y0 + h // 3 + 1, x0:x0 + w // 3 + 1] = rng.integers(0, 256, 3)
    a += rng.normal(0, 12, a.shape)
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=save.pop("quality", 90), **save)
    return buf.getvalue()


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def with_sof_size(data: bytes, width: int, height: int) -> bytes:
    """The same JPEG with the frame header claiming another size (a cheap
    stand-in for a huge image: nothing is decoded before the size check)."""
    d = bytearray(data)
    pos = 2
    while pos < len(d):
        marker, length = d[pos + 1], struct.unpack(">H", d[pos + 2:pos + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            d[pos + 5:pos + 9] = struct.pack(">HH", height, width)
            return bytes(d)
        pos += 2 + length
    raise ValueError("no SOF marker")


def sixteen_bit_png(path: Path, w: int = 24, h: int = 16) -> None:
    a = (np.linspace(0, 65535, w * h).reshape(h, w)).astype(np.uint16)
    Image.fromarray(a).save(path)


# name -> (expected outcome, what it is).  'ok' images are embedded (converted
# where needed); 'failed' ones are listed with a reason containing the text.
BAD_CASES = {
    "plain.jpg": ("ok", ""),
    "truncated.jpg": ("failed", "truncated"),
    "corrupt_header.jpg": ("failed", "identify"),
    "zero.jpg": ("failed", "empty file"),
    "text.jpg": ("failed", "identify"),
    "missing.jpg": ("failed", "file not found"),
    "gray.jpg": ("ok", ""),
    "cmyk.jpg": ("ok", ""),
    "rgba.png": ("ok", ""),
    "png_named.jpg": ("ok", ""),
    "palette.png": ("ok", ""),
    "sixteen.png": ("ok", ""),
    "exif6.jpg": ("ok", ""),
    "exif3.jpg": ("ok", ""),
    "progressive.jpg": ("ok", ""),
    "tiny10.jpg": ("ok", ""),
    "bomb.jpg": ("failed", "exceeds the limit"),
    "bomb2x.jpg": ("failed", "decompression-bomb"),
}


def write_bad_cases(folder: Path) -> dict[str, Path]:
    """Write every case of :data:`BAD_CASES` into ``folder`` (the missing one
    is not written)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = photo(96, 64, seed=1)
    plain = jpeg_bytes(base)
    files = {
        "plain.jpg": plain,
        "truncated.jpg": plain[: len(plain) * 2 // 3],
        "corrupt_header.jpg": plain[:2] + bytes(range(7, 207)) + plain[202:],
        "zero.jpg": b"",
        "text.jpg": b"this is not an image\n",
        "gray.jpg": jpeg_bytes(base.convert("L")),
        "cmyk.jpg": jpeg_bytes(base.convert("CMYK")),
        "exif6.jpg": jpeg_bytes(photo(80, 48, seed=2), exif=exif_with_orientation(6)),
        "exif3.jpg": jpeg_bytes(photo(80, 48, seed=3), exif=exif_with_orientation(3)),
        "progressive.jpg": jpeg_bytes(photo(90, 70, seed=4), progressive=True),
        "tiny10.jpg": jpeg_bytes(photo(10, 10, seed=5)),
        "bomb.jpg": with_sof_size(plain, 10_000, 9_000),
        "bomb2x.jpg": with_sof_size(plain, 20_000, 20_000),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    rgba = photo(40, 30, seed=6).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    photo(33, 21, seed=7).save(folder / "png_named.jpg", format="PNG")
    photo(30, 30, seed=8).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    sixteen_bit_png(folder / "sixteen.png")
    return {name: folder / name for name in BAD_CASES}
