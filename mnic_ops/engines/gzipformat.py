"""The gzip format as the engines write and check it: the deflate codec
(:func:`codec`), the header every mnic-ops archive carries (:func:`is_engine_archive`),
streaming a file into an archive (:func:`compress_into`) and reading one back against
the original (:func:`gunzip_matches`, :func:`read_small_or_hash`).
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from types import ModuleType

SMALL = 1 << 20  # files up to this size are compared in memory, larger ones by hash
CHUNK = 1 << 20
GZIP_FNAME = 0x08


# --- codecs ---------------------------------------------------------------------------

def _load_codec(name: str) -> ModuleType | None:
    try:
        if name == "zlib-ng":
            from zlib_ng import zlib_ng  # type: ignore[import-not-found,unused-ignore]
            return zlib_ng  # type: ignore[no-any-return,unused-ignore]
        if name == "isal":
            from isal import isal_zlib  # type: ignore[import-not-found,unused-ignore]
            return isal_zlib  # type: ignore[no-any-return,unused-ignore]
    except ImportError:
        return None
    return zlib if name == "zlib" else None


def codec(name: str = "auto") -> tuple[str, ModuleType]:
    """The deflate implementation to use: zlib-ng (same format as zlib, about twice as
    fast), isal, or the standard zlib. All write raw deflate that gzip reads."""
    order = ["zlib-ng", "zlib"] if name == "auto" else [name]
    for n in order:
        mod = _load_codec(n)
        if mod is not None:
            return n, mod
    from mnic_ops.core.errors import InputError

    raise InputError(f"compressor {name!r} is not installed (pip install {name})")


# --- gzip writing and verification -------------------------------------------------------

def _gzip_header(name: str, mtime: float) -> bytes:
    mt = int(mtime) if 0 <= mtime < 2**32 else 0
    return (b"\x1f\x8b\x08" + bytes([GZIP_FNAME]) + struct.pack("<I", mt) + b"\x00\x03"
            + os.fsencode(name).replace(b"\x00", b"") + b"\x00")


def is_engine_archive(fd: int, name: str, st: os.stat_result) -> bool:
    """Does the gzip file open at ``fd`` (stat ``st``) start exactly as this engine
    starts its archive of ``name``: that name in the header, and the archive's own mtime
    (the original's, which the engine gives both)? What every mnic-ops archive carries;
    a file that does not is not one of ours."""
    want = _gzip_header(name, st.st_mtime)
    return os.pread(fd, len(want), 0) == want


def gzip_size(fd: int, st: os.stat_result) -> int:
    """The size the gzip file claims it decompresses to (its ISIZE trailer, modulo 2**32:
    a claim that decompressing checks)."""
    if st.st_size < 18:
        return 0
    return int(struct.unpack("<I", os.pread(fd, 4, st.st_size - 4))[0])


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def compress_into(src: int, dst: int, name: str, st: os.stat_result, mod: ModuleType,
                   level: int) -> tuple[int, bytes | str]:
    """Stream ``src`` into ``dst`` as gzip. Returns (archive size, original bytes when
    small else their SHA-256 hex)."""
    header = _gzip_header(name, st.st_mtime)
    if st.st_size <= SMALL:
        chunks = []
        while c := os.read(src, CHUNK):  # to EOF: it may have grown since fstat
            chunks.append(c)
        data = b"".join(chunks)
        out = (header + mod.compress(data, level, wbits=-15)
               + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF))
        write_all(dst, out)
        return len(out), data if len(data) <= SMALL else hashlib.sha256(data).hexdigest()
    comp = mod.compressobj(level, zlib.DEFLATED, -15)
    h = hashlib.sha256()
    crc, length = 0, 0
    write_all(dst, header)
    size = len(header)
    while c := os.read(src, CHUNK):
        h.update(c)
        crc = zlib.crc32(c, crc)
        length += len(c)
        piece = comp.compress(c)
        write_all(dst, piece)
        size += len(piece)
    piece = comp.flush() + struct.pack("<II", crc, length & 0xFFFFFFFF)
    write_all(dst, piece)
    return size + len(piece), h.hexdigest()


_INFLATE: ModuleType | None = None


def _inflater() -> ModuleType:
    """zlib-ng's inflate where installed (faster), else the standard zlib: both check
    the gzip header, CRC-32 and length."""
    global _INFLATE
    if _INFLATE is None:
        _INFLATE = _load_codec("zlib-ng") or zlib
    return _INFLATE


def gunzip_matches(fd: int, want: bytes | str) -> bool:
    """Does the gzip file at ``fd`` (read from its start) decompress, with a valid CRC and
    length trailer and nothing after it, to ``want`` (bytes, or their SHA-256 hex)?"""
    os.lseek(fd, 0, os.SEEK_SET)
    d = _inflater().decompressobj(31)
    small = isinstance(want, bytes)
    got: list[bytes] = []
    h = hashlib.sha256()
    total = 0
    limit = len(want) if isinstance(want, bytes) else None
    try:
        while c := os.read(fd, CHUNK):
            if d.eof:
                return False  # trailing data after the member
            out = d.decompress(c)
            total += len(out)
            if limit is not None and total > limit:
                return False
            if small:
                got.append(out)
            else:
                h.update(out)
        out = d.flush()
        if small:
            got.append(out)
        else:
            h.update(out)
    except (zlib.error, _inflater().error):
        return False
    if not d.eof or d.unused_data:
        return False
    return b"".join(got) == want if isinstance(want, bytes) else h.hexdigest() == want


def read_small_or_hash(fd: int, st: os.stat_result) -> bytes | str:
    os.lseek(fd, 0, os.SEEK_SET)
    if st.st_size <= SMALL:
        chunks = []
        while c := os.read(fd, CHUNK):
            chunks.append(c)
        return b"".join(chunks)
    h = hashlib.sha256()
    while c := os.read(fd, CHUNK):
        h.update(c)
    return h.hexdigest()
