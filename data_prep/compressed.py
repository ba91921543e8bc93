"""Opening possibly compressed input files (.gz, .xz, .bz2, .zst) so that damage is never silent.

A truncated or corrupt compressed file raises `CorruptFileError`, naming the file, at the point
where its data stops making sense: the readers turn that into a counted drop, or an error under
`--strict`. Without this, a truncated .zst reads as empty or short and the others end the run
with a bare traceback.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from pathlib import Path
from typing import IO, Any, BinaryIO

from lingraft.errors import LingraftError

_CHUNK = 1 << 17            # compressed bytes read at a time
_BUFFER = 1 << 16           # decompressed bytes each `BufferedReader` holds


class CorruptFileError(LingraftError):
    """A whole input file that cannot be read to its end. `reason` is the drop reason."""

    def __init__(self, path: str | Path, reason: str, detail: str):
        super().__init__(f"{path}: {reason.replace('_', ' ')} ({detail})")
        self.path, self.reason, self.detail = str(path), reason, detail


class _ZstdRaw(io.RawIOBase):
    """Decompresses a .zst file frame by frame. zstandard's own stream reader returns end-of-file
    when the compressed data stops mid-frame, which makes a truncated file look complete."""

    def __init__(self, path: str):
        import zstandard
        self._zstd = zstandard
        self._path = path
        self._fh = open(path, "rb")
        self._frame: Any = None        # the current frame's decompressor, None between frames
        self._pending = memoryview(b"")  # decompressed bytes not yet handed out
        self._seen_data = False

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while not self._pending:
            if not self._fill():
                return 0
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]   # a view: no copy of the rest
        return n

    def _fill(self) -> bool:
        """Decompress the next chunk into `_pending`; False at a clean end of the file."""
        chunk = self._fh.read(_CHUNK)
        if not chunk:
            if self._frame is not None or not self._seen_data:
                raise CorruptFileError(self._path, "truncated_file", "the zstd stream ends inside a frame"
                                       if self._seen_data else "no zstd frame in the file")
            return False
        self._seen_data = True
        out = []
        while chunk:
            if self._frame is None:
                self._frame = self._zstd.ZstdDecompressor().decompressobj()
            try:
                out.append(self._frame.decompress(chunk))
            except self._zstd.ZstdError as exc:
                raise CorruptFileError(self._path, "corrupt_file", str(exc)) from None
            chunk = b""
            if self._frame.eof:       # a file may hold several frames (pzstd, concatenated files)
                chunk = self._frame.unused_data
                self._frame = None
        self._pending = memoryview(b"".join(out))
        return True

    def close(self) -> None:
        self._fh.close()
        super().close()


# What each decompressor raises on damaged data; EOFError is how gzip, lzma and bz2 report truncation.
_DAMAGE = (EOFError, OSError, lzma.LZMAError, zlib.error)


class _Checked(io.RawIOBase):
    """Turns a decompressor's errors into `CorruptFileError` naming the file."""

    def __init__(self, inner: BinaryIO, path: str):
        self._inner, self._path = inner, path

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        try:
            return self._inner.readinto(buf)
        except EOFError as exc:
            raise CorruptFileError(self._path, "truncated_file", str(exc)) from None
        except _DAMAGE as exc:
            raise CorruptFileError(self._path, "corrupt_file", f"{type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        self._inner.close()
        super().close()


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a possibly compressed file for binary reading (by its suffix), line iteration included."""
    p = str(path)
    if p.endswith(".zst"):
        return io.BufferedReader(_ZstdRaw(p), _BUFFER)
    opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(Path(p).suffix)
    if opener is None:
        return open(p, "rb")
    return io.BufferedReader(_Checked(opener(p, "rb"), p), _BUFFER)
