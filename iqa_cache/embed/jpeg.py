"""Reading a JPEG's header without decoding it.

The tensor pipeline (:mod:`iqa_cache.embed.pipeline`) decodes plain JPEGs with
torchvision (nvJPEG on a GPU, libjpeg-turbo on the CPU) and sends everything
else to Pillow.  This module decides which is which from the bytes alone, in
a few microseconds: the frame type (baseline / progressive / other), sample
precision, size, colour components, the EXIF orientation Pillow would apply,
and whether the file ends with an end-of-image marker (a truncated file does
not, and goes to Pillow, which reports it).

Anything this parser is not sure about is declared not ``tensor_ok``: such
images take the reference (Pillow) path, never a guess.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

# Start-of-frame markers: 0xC0 baseline, 0xC1 extended sequential, 0xC2
# progressive (all Huffman); the rest are lossless / arithmetic / hierarchical.
SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
SEQUENTIAL = frozenset({0xC0, 0xC1})
PROGRESSIVE = 0xC2
_STANDALONE = frozenset({0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class JpegHeader:
    """What the tensor pipeline needs to know about one JPEG."""

    width: int
    height: int
    components: int
    precision: int
    sof: int  # the start-of-frame marker's second byte (0xC0 baseline, 0xC2 progressive, ...)
    orientation: int  # 1..8, as Pillow's ImageOps.exif_transpose reads it; 1 when absent
    tensor_ok: bool  # torchvision decodes it to what Pillow would (after orientation)
    why_not: str = ""  # when not tensor_ok: why it goes to Pillow

    @property
    def progressive(self) -> bool:
        return self.sof == PROGRESSIVE

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def oriented_size(self) -> tuple[int, int]:
        """(height, width) after the EXIF orientation is applied."""
        return (self.width, self.height) if self.orientation >= 5 else (self.height, self.width)


def _exif_orientation(seg: bytes) -> int | None:
    """The Orientation tag of IFD0 in an APP1 'Exif\\0\\0' segment: 1 when
    the tag is absent, None when the block cannot be read with certainty."""
    tiff = seg[6:]
    if len(tiff) < 8:
        return None
    order = tiff[:2]
    if order == b"II":
        e = "<"
    elif order == b"MM":
        e = ">"
    else:
        return None
    magic, ifd = struct.unpack(e + "HI", tiff[2:8])
    if magic != 42 or ifd + 2 > len(tiff):
        return None
    (count,) = struct.unpack(e + "H", tiff[ifd:ifd + 2])
    if ifd + 2 + 12 * count > len(tiff):
        return None
    for k in range(count):
        off = ifd + 2 + 12 * k
        tag, typ, n = struct.unpack(e + "HHI", tiff[off:off + 8])
        if tag != ORIENTATION_TAG:
            continue
        if n != 1:
            return None
        if typ == 3:  # SHORT
            (v,) = struct.unpack(e + "H", tiff[off + 8:off + 10])
        elif typ == 4:  # LONG
            (v,) = struct.unpack(e + "I", tiff[off + 8:off + 12])
        else:
            return None
        return v if 1 <= v <= 8 else 1  # Pillow ignores values it has no transpose for
    return 1


def ends_with_eoi(data: bytes | bytearray | memoryview) -> bool:
    """True when the data ends with the end-of-image marker (allowing
    trailing padding bytes), i.e. the file is not cut short."""
    tail = bytes(data[-64:]).rstrip(b"\x00\r\n\t ")
    return tail.endswith(b"\xff\xd9")


def parse_header(data: bytes | bytearray | memoryview) -> JpegHeader | None:
    """Parse the markers up to the first start-of-scan.  Returns None when
    ``data`` is not a JPEG (or its header is broken); otherwise a
    :class:`JpegHeader` saying whether the tensor path may decode it."""
    mv = memoryview(data)
    n = len(mv)
    if n < 4 or mv[0] != 0xFF or mv[1] != 0xD8:
        return None
    pos = 2
    sof = None
    exif_orientation: int | None = 1
    seen_exif = seen_xmp = False
    adobe_transform: int | None = None
    while pos < n:
        if mv[pos] != 0xFF:
            return None  # garbage between segments
        while pos < n and mv[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            return None
        marker = mv[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker == 0xD9:  # EOI before any scan
            return None
        if pos + 2 > n:
            return None
        length = (mv[pos] << 8) | mv[pos + 1]
        if length < 2 or pos + length > n:
            return None
        seg = mv[pos + 2:pos + length]
        if marker in SOF_MARKERS:
            if len(seg) < 6:
                return None
            comps = seg[5]
            if len(seg) < 6 + 3 * comps:
                return None
            sof = (marker, seg[0], (seg[1] << 8) | seg[2], (seg[3] << 8) | seg[4], comps,
                   bytes(seg[6 + 3 * c] for c in range(comps)))
        elif marker == 0xE1:
            head = bytes(seg[:29])
            if head.startswith(b"Exif\x00\x00") and not seen_exif:
                seen_exif = True
                try:
                    exif_orientation = _exif_orientation(bytes(seg))
                except struct.error:
                    exif_orientation = None
            elif head.startswith(_XMP):
                seen_xmp = True
        elif marker == 0xEE and bytes(seg[:5]) == b"Adobe" and len(seg) >= 12:
            adobe_transform = seg[11]
        elif marker == 0xDA:  # start of scan: the header is over
            break
        pos += length
    else:
        return None
    if sof is None:
        return None
    sof_marker, precision, height, width, comps, ids = sof
    orientation = exif_orientation if exif_orientation is not None else 1
    why = ""
    if sof_marker not in SEQUENTIAL and sof_marker != PROGRESSIVE:
        why = f"JPEG frame type 0x{sof_marker:02X} (lossless/arithmetic/hierarchical)"
    elif precision != 8:
        why = f"{precision}-bit samples"
    elif comps not in (1, 3):
        why = f"{comps} colour components (CMYK/YCCK)"
    elif comps == 3 and (adobe_transform == 0 or ids == b"RGB"):
        why = "RGB-coded (not YCbCr) JPEG"
    elif width == 0 or height == 0:
        why = "height defined after the first scan (DNL)"
    elif exif_orientation is None:
        why = "EXIF block Pillow may read differently"
    elif seen_xmp and (not seen_exif or exif_orientation == 1):
        why = "XMP metadata that may carry the orientation"
    elif not ends_with_eoi(mv):
        why = "no end-of-image marker (truncated?)"
    return JpegHeader(width=width, height=height, components=comps, precision=precision, sof=sof_marker,
                      orientation=orientation, tensor_ok=not why, why_not=why)
