"""Files under a local directory (the baked-in ``content/``).

Confinement: the requested path (already normalised by the policy) is resolved with realpath and
must stay under the real root, so a symlink may point inside the root but never out of it; the
final open uses O_NOFOLLOW and O_NONBLOCK (a FIFO must not block the server) and only regular files
are served.  Files up to ``resident_max`` bytes are read once and kept in an LRU bounded by
``resident_bytes``, keyed by (device, inode, size, mtime), so a thousand clients fetching the same
file share one copy; larger files are streamed with pread.  No mmap: a file truncated while mapped
would kill the process with SIGBUS.
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict

from edgetftp.sources.base import (
    AccessDenied,
    Content,
    FileNotFound,
    MemoryContent,
    Source,
    SourceUnavailable,
)

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
_FileKey = tuple[int, int, int, int]


class StreamedFile(Content):
    """A file too large to keep resident: read with pread on demand."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size = size

    async def read(self, offset: int, length: int) -> bytes:
        try:
            return os.pread(self._fd, length, offset)
        except OSError as exc:
            raise SourceUnavailable(f"read failed: {exc}") from exc

    async def aclose(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LocalSource(Source):
    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        case_insensitive: bool = False,
        resident_bytes: int = 256 * 2**20,
        resident_max: int = 64 * 2**20,
    ) -> None:
        self._root = os.path.realpath(root)
        self.description = self._root
        self._case_insensitive = case_insensitive
        self._resident_bytes = resident_bytes
        self._resident_max = min(resident_max, resident_bytes)
        self._files: OrderedDict[_FileKey, memoryview] = OrderedDict()
        self._files_size = 0

    async def open(self, path: str) -> Content:
        return self.open_now(path)

    def open_now(self, path: str) -> Content:
        fd = self._open_fd(self._locate(path))
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise AccessDenied(f"not a regular file: {path!r}")
            if info.st_size > self._resident_max:
                content: Content = StreamedFile(fd, info.st_size)
                fd = -1  # now owned by the StreamedFile
                return content
            return MemoryContent(self._resident(fd, info))
        finally:
            if fd >= 0:
                os.close(fd)

    async def check(self) -> bool:
        return os.path.isdir(self._root)

    def _locate(self, path: str) -> str:
        real = os.path.realpath(os.path.join(self._root, path))
        if self._case_insensitive and not os.path.lexists(real):
            real = os.path.realpath(self._find_casefolded(path))
        if not real.startswith(self._root + os.sep):
            raise AccessDenied(f"outside the root: {path!r}")
        return real

    def _find_casefolded(self, path: str) -> str:
        """The existing path whose segments match ``path``'s ignoring case (or ``path`` itself)."""
        current = self._root
        for segment in path.split("/"):
            exact = os.path.join(current, segment)
            if os.path.lexists(exact):
                current = exact
                continue
            wanted = segment.casefold()
            try:
                match = next((name for name in os.listdir(current) if name.casefold() == wanted), None)
            except OSError:
                match = None
            if match is None:
                return os.path.join(self._root, path)
            current = os.path.join(current, match)
        return current

    @staticmethod
    def _open_fd(real: str) -> int:
        try:
            return os.open(real, _OPEN_FLAGS)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise FileNotFound(f"no such file: {real}") from exc
        except PermissionError as exc:
            raise AccessDenied(f"permission denied: {real}") from exc
        except OSError as exc:  # ELOOP (a symlink at the end), ENXIO (a socket), ...
            raise AccessDenied(f"cannot open {real}: {exc.strerror}") from exc

    def _resident(self, fd: int, info: os.stat_result) -> memoryview:
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        view = self._files.get(key)
        if view is not None:
            self._files.move_to_end(key)
            return view
        view = memoryview(_read_exactly(fd, info.st_size))
        self._files[key] = view
        self._files_size += len(view)
        while self._files_size > self._resident_bytes and len(self._files) > 1:
            _, evicted = self._files.popitem(last=False)
            self._files_size -= len(evicted)
        return view


def _read_exactly(fd: int, size: int) -> bytes:
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break  # the file shrank since fstat: serve what is there
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
