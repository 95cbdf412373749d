"""Recognise a media file from its first bytes, never from its extension.

``sniff`` returns a :class:`MediaType` or ``None`` for files that are not media we handle.
Extensions only decide which unknown files are worth opening at all during a scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

HEADER_BYTES = 64
READ_BYTES = 4096  # enough for a TIFF's first directory (DNG is told from TIFF by a tag there)

# Extensions that never hold media: skipped without opening the file.
NOT_MEDIA_EXTENSIONS = frozenset((
    ".xmp", ".json", ".txt", ".md", ".pdf", ".aae", ".thm", ".db", ".ini", ".html", ".htm", ".xml",
    ".csv", ".log", ".pp3", ".dop", ".on1", ".py", ".sh", ".zip", ".gz", ".tar", ".7z", ".rar",
    ".doc", ".docx", ".odt", ".lrcat", ".lrdata", ".nfo", ".sfv", ".md5", ".srt",
))


@dataclass(frozen=True)
class MediaType:
    kind: str  # "image" or "video"
    format: str  # short name: JPEG, PNG, HEIF, CR2, MP4, ...
    mime: str
    raw: bool = False  # a camera raw file: decoded through its embedded preview


# Old QuickTime files start with an atom rather than ``ftyp``.
_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
# ISO media brands that hold sound only (iTunes audio, audiobooks, Flash audio).
_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_MP4_VIDEO = {
    b"qt  ": ("MOV", "video/quicktime"),
    b"3gp4": ("3GP", "video/3gpp"), b"3gp5": ("3GP", "video/3gpp"), b"3gp6": ("3GP", "video/3gpp"),
    b"3g2a": ("3G2", "video/3gpp2"),
    b"M4V ": ("M4V", "video/x-m4v"),
}


def sniff_bytes(head: bytes) -> MediaType | None:
    if head.startswith(b"\xff\xd8\xff"):
        return MediaType("image", "JPEG", "image/jpeg")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return MediaType("image", "PNG", "image/png")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return MediaType("image", "GIF", "image/gif")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return MediaType("image", "WEBP", "image/webp")
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return MediaType("video", "AVI", "video/x-msvideo")
    if head.startswith(b"BM") and len(head) > 14 and head[6:10] == b"\0\0\0\0":
        return MediaType("image", "BMP", "image/bmp")
    if head[4:8] == b"ftyp":
        return _sniff_iso_bmff(head)
    if head[:4] in (b"II*\0", b"MM\0*"):
        return _sniff_tiff(head)
    for magic, fmt, mime in _RAW_MAGIC:
        if head.startswith(magic):
            return MediaType("image", fmt, mime, raw=True)
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        is_webm = b"\x42\x82\x84webm" in head  # the EBML DocType element
        return MediaType("video", "WEBM" if is_webm else "MKV",
                         "video/webm" if is_webm else "video/x-matroska")
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return MediaType("video", "WMV", "video/x-ms-wmv")  # ASF header object
    if head.startswith(b"FLV\x01") and len(head) > 4 and head[4] & 0x01:
        return MediaType("video", "FLV", "video/x-flv")  # only when it has a video track
    if head.startswith(b"\x00\x00\x01\xba"):
        return MediaType("video", "MPEG", "video/mpeg")  # MPEG program stream (.mpg, .vob)
    if head[4:8] in _QUICKTIME_ATOMS and int.from_bytes(head[:4], "big") >= 8:
        return MediaType("video", "MOV", "video/quicktime")
    if _sync_bytes(head, 0, 188):
        return MediaType("video", "TS", "video/mp2t")
    if _sync_bytes(head, 4, 192):
        return MediaType("video", "MTS", "video/mp2t")  # AVCHD: 4-byte timecode per packet
    return None


def _sync_bytes(head: bytes, first: int, packet: int) -> bool:
    """MPEG transport stream: a 0x47 sync byte at the start of every packet we can see."""
    positions = range(first, min(len(head), first + 5 * packet), packet)
    return len(positions) >= 2 and all(head[i] == 0x47 for i in positions)


_RAW_MAGIC = (
    (b"IIRO", "ORF", "image/x-olympus-orf"), (b"IIRS", "ORF", "image/x-olympus-orf"),
    (b"MMOR", "ORF", "image/x-olympus-orf"), (b"IIU\0", "RW2", "image/x-panasonic-rw2"),
    (b"FUJIFILMCCD-RAW", "RAF", "image/x-fuji-raf"),
    (b"II\x1a\0\0\0HEAPCCDR", "CRW", "image/x-canon-crw"),
    (b"\0MRM", "MRW", "image/x-minolta-mrw"), (b"FOVb", "X3F", "image/x-sigma-x3f"),
)


def _sniff_iso_bmff(head: bytes) -> MediaType | None:
    brand = head[8:12]
    compatible = {head[i:i + 4] for i in range(16, min(len(head), 64), 4)}
    if brand in _AUDIO_BRANDS:
        return None
    if brand == b"crx ":
        return MediaType("image", "CR3", "image/x-canon-cr3", raw=True)
    if brand in _AVIF_BRANDS:
        return MediaType("image", "AVIF", "image/avif")
    if brand in _HEIF_BRANDS or (brand not in _MP4_VIDEO and compatible & _HEIF_BRANDS
                                 and not compatible & {b"isom", b"mp41", b"mp42"}):
        return MediaType("image", "HEIF", "image/heif")
    if brand in _MP4_VIDEO:
        fmt, mime = _MP4_VIDEO[brand]
        return MediaType("video", fmt, mime)
    return MediaType("video", "MP4", "video/mp4")


def _sniff_tiff(head: bytes) -> MediaType:
    if head[8:10] == b"CR" and head[10:11] == b"\x02":
        return MediaType("image", "CR2", "image/x-canon-cr2", raw=True)
    if _ifd0_has(head, 0xC612):  # DNGVersion: a DNG whatever its name
        return MediaType("image", "DNG", "image/x-adobe-dng", raw=True)
    # NEF, ARW, DNG, PEF and plain TIFF share the TIFF header; the extension is only a
    # hint here, confirmed or corrected by the decoder (a raw file has an embedded preview).
    return MediaType("image", "TIFF", "image/tiff")


def _ifd0_has(head: bytes, tag: int) -> bool:
    """Whether the first TIFF directory (when it lies within ``head``) holds ``tag``."""
    order: Literal["little", "big"] = "little" if head[:2] == b"II" else "big"
    offset = int.from_bytes(head[4:8], order)
    if offset < 8 or offset + 2 > len(head):
        return False
    count = int.from_bytes(head[offset:offset + 2], order)
    for i in range(min(count, (len(head) - offset - 2) // 12)):
        entry = offset + 2 + 12 * i
        if int.from_bytes(head[entry:entry + 2], order) == tag:
            return True
    return False


RAW_TIFF_EXTENSIONS = frozenset((
    ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".pef", ".raw", ".3fr", ".erf", ".kdc", ".mos",
    ".iiq", ".srw", ".x3f",
))


def sniff(path: Path) -> MediaType | None:
    """The media type of ``path`` from its content, or ``None`` when it is not media."""
    with open(path, "rb") as fh:
        head = fh.read(READ_BYTES)
    found = sniff_bytes(head)
    if found is not None and found.format == "TIFF" and path.suffix.lower() in RAW_TIFF_EXTENSIONS:
        fmt = path.suffix.lower().lstrip(".").upper()
        return MediaType("image", fmt, f"image/x-{fmt.lower()}", raw=True)
    return found


def worth_sniffing(name: str) -> bool:
    """Whether a scan should open ``name`` to look for media (hidden and known-other: no)."""
    dot = name.rfind(".")
    return not (dot > 0 and name[dot:].lower() in NOT_MEDIA_EXTENSIONS)
