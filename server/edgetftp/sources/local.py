"""Files under a local directory (the baked-in ``content/``).

Confinement is the kernel's: names are resolved with ``openat2(RESOLVE_BENEATH |
RESOLVE_NO_MAGICLINKS)`` relative to a descriptor of the root held for the server's life, so no
component -- whatever a local writer swaps in while we resolve -- can lead outside.  Where the
kernel lacks openat2 the path is walked one component at a time with ``O_NOFOLLOW`` on each
directory, and symlinks inside the root are followed by our own code, relative to descriptors we
hold.  Absolute symlinks and ``..`` above the root are refused either way.  The final open uses
O_NONBLOCK (a FIFO must not block) and only regular files are served.

Nothing here reads file data on the event loop: ``open_now`` answers only from memory (a resident
copy, checked against the file's identity with one fstat), and ``open`` resolves, fills and streams
on a thread pool.  Files up to ``object_max`` bytes are read once into the shared
``ResidentBuffers`` (the one LRU, bounded by ``cache_bytes``), keyed by (device, inode, size,
mtime); larger ones are streamed with pread from the descriptor that was opened, and a change of
that file (truncated, overwritten, grown) ends the transfer with ``SourceChanged``.  No mmap: a file
truncated while mapped would kill the process with SIGBUS.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import errno
import os
import platform
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import cachetools

from edgetftp.sources.base import (
    AccessDenied,
    Content,
    FileNotFound,
    MemoryContent,
    NullObserver,
    Source,
    SourceChanged,
    SourceError,
    SourceObserver,
    SourceUnavailable,
)
from edgetftp.sources.cache import Buffer, ResidentBuffers, SingleFlight

T = TypeVar("T")
_FileKey = tuple[int, int, int, int]  # device, inode, size, mtime (ns)

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Symlinks followed in one lookup at most (the kernel's own limit).
MAX_SYMLINKS = 40
#: Directories whose lower-cased name index is kept (``--case-insensitive``).
CASE_INDEX_DIRECTORIES = 1024
#: Times a lookup is retried when openat2 reports a concurrent rename (EAGAIN).
RENAME_RETRIES = 8


# --- openat2 through ctypes ---

_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}.get(platform.machine())
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


def _libc_syscall() -> Callable[..., int] | None:
    if _SYS_OPENAT2 is None:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    function: Callable[..., int] = libc.syscall
    return function


def openat2_beneath(syscall: Callable[..., int], dir_fd: int, path: str, flags: int) -> int:
    """``openat2(dir_fd, path, flags, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)``; raises OSError."""
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    fd = syscall(
        ctypes.c_long(_SYS_OPENAT2 or -1),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return fd


# --- resolution ---


class _Resolver:
    """Opens a policy-checked relative path beneath the root descriptor, never outside it."""

    def __init__(self, root_fd: int, *, use_openat2: bool | None, case_insensitive: bool) -> None:
        self._root_fd = root_fd
        self._syscall = _libc_syscall() if use_openat2 is not False else None
        if self._syscall is not None and not self._openat2_works():
            self._syscall = None
        if use_openat2 and self._syscall is None:
            raise OSError(errno.ENOSYS, "openat2 is not available here")
        self._case_insensitive = case_insensitive
        self._indexes: cachetools.LRUCache[tuple[int, int], tuple[int, dict[str, str]]] = cachetools.LRUCache(
            maxsize=CASE_INDEX_DIRECTORIES
        )
        self._index_lock = threading.Lock()
        self._building: dict[tuple[int, int], threading.Lock] = {}
        self.index_builds = 0  # directory listings made for case-insensitive lookups

    @property
    def method(self) -> str:
        return "openat2" if self._syscall is not None else "openat walk"

    def open(self, path: str) -> int:
        """A descriptor of the file (O_RDONLY | O_NONBLOCK).  Raises SourceError, never OSError."""
        try:
            return self._open_exact(path)
        except FileNotFound:
            if not self._case_insensitive:
                raise
        return self._open_exact(self._casefolded(path))

    def _openat2_works(self) -> bool:
        assert self._syscall is not None
        try:
            os.close(openat2_beneath(self._syscall, self._root_fd, ".", _DIR_FLAGS))
        except OSError:  # ENOSYS (old kernel), EPERM (a seccomp filter): walk instead
            return False
        return True

    def _open_exact(self, path: str) -> int:
        try:
            if self._syscall is None:
                return self._walk(path)
            for _ in range(RENAME_RETRIES):
                try:
                    return openat2_beneath(self._syscall, self._root_fd, path, _OPEN_FLAGS)
                except BlockingIOError:  # EAGAIN: a rename raced the lookup; the kernel asks to retry
                    continue
            raise SourceUnavailable(f"lookup of {path!r} kept racing renames")
        except OSError as exc:
            raise _map_open_error(exc, path) from exc

    def _walk(self, path: str) -> int:
        """Resolve ``path`` one component at a time; symlinks are followed here, within the root."""
        pending = path.split("/")[::-1]  # a stack: next component last
        stack = [os.dup(self._root_fd)]  # descriptors of the directories walked so far
        links = 0
        try:
            while pending:
                name = pending.pop()
                if name in ("", "."):
                    continue
                if name == "..":
                    if len(stack) == 1:
                        raise AccessDenied(f"outside the root: {path!r}")
                    os.close(stack.pop())
                    continue
                last = not pending
                target = self._step(stack[-1], name, last)
                if isinstance(target, int):
                    if last:
                        return target
                    stack.append(target)
                    continue
                links += 1
                if links > MAX_SYMLINKS or target.startswith("/"):
                    raise AccessDenied(f"symlink loop or absolute symlink in {path!r}")
                pending.extend(target.split("/")[::-1])
            raise AccessDenied(f"not a file: {path!r}")
        finally:
            for fd in stack:
                os.close(fd)

    @staticmethod
    def _step(dir_fd: int, name: str, last: bool) -> int | str:
        """Open one component without following it: a descriptor, or a symlink's target to follow."""
        flags = (_OPEN_FLAGS | os.O_NOFOLLOW) if last else _DIR_FLAGS
        try:
            return os.open(name, flags, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            if not stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise
        return os.readlink(name, dir_fd=dir_fd)

    def _casefolded(self, path: str) -> str:
        """The path whose segments match ``path``'s ignoring case, through each directory's index."""
        segments = path.split("/")
        found: list[str] = []
        for segment in segments:
            directory = "/".join(found) or "."
            match = self._index(directory).get(segment.casefold())
            if match is None:
                raise FileNotFound(f"no such file (any case): {path!r}")
            found.append(match)
        return "/".join(found)

    def _index(self, directory: str) -> dict[str, str]:
        """{lower-cased name: name} of a directory beneath the root, rebuilt when its mtime changes."""
        try:
            fd = self._open_directory(directory)
        except (SourceError, OSError):
            return {}
        try:
            info = os.fstat(fd)
            identity = (info.st_dev, info.st_ino)
            index = self._fresh_index(identity, info.st_mtime_ns)
            if index is not None:
                return index
            with self._index_lock:
                building = self._building.setdefault(identity, threading.Lock())
            with building:  # one listing per directory, however many threads miss at once
                index = self._fresh_index(identity, info.st_mtime_ns)
                if index is None:
                    index = self._list(fd)
                    with self._index_lock:
                        self._indexes[identity] = (info.st_mtime_ns, index)
                        self._building.pop(identity, None)
                        self.index_builds += 1
            return index
        except OSError:
            return {}
        finally:
            os.close(fd)

    def _fresh_index(self, identity: tuple[int, int], mtime_ns: int) -> dict[str, str] | None:
        with self._index_lock:
            held = self._indexes.get(identity)
        return held[1] if held is not None and held[0] == mtime_ns else None

    @staticmethod
    def _list(fd: int) -> dict[str, str]:
        index: dict[str, str] = {}
        with os.scandir(fd) as entries:
            for entry in entries:
                index.setdefault(entry.name.casefold(), entry.name)
        return index

    def _open_directory(self, directory: str) -> int:
        """A readable descriptor of a directory beneath the root (for listing it)."""
        if directory == ".":
            return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._root_fd)
        fd = self._open_exact(directory)
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileNotFound(f"not a directory: {directory!r}")
        return fd


def _map_open_error(exc: OSError, path: str) -> SourceError:
    code = exc.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        return FileNotFound(f"no such file: {path!r}")
    if code == errno.EXDEV:
        return AccessDenied(f"outside the root: {path!r}")
    if code in (errno.EACCES, errno.EPERM):
        return AccessDenied(f"permission denied: {path!r}")
    if code in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        return SourceUnavailable(f"cannot open {path!r}: {exc.strerror}")
    # ELOOP (a symlink at the end or a loop), ENXIO (a socket), ...
    return AccessDenied(f"cannot open {path!r}: {exc.strerror}")


# --- contents ---


@dataclass(frozen=True, slots=True)
class _Identity:
    """What a file was when it was opened: a change of any of these ends the transfer."""

    inode: int
    size: int
    mtime_ns: int

    @staticmethod
    def of(info: os.stat_result) -> _Identity:
        return _Identity(info.st_ino, info.st_size, info.st_mtime_ns)

    def changes(self, info: os.stat_result) -> str | None:
        now = _Identity.of(info)
        if now == self:
            return None
        if now.size != self.size:
            return f"size {self.size} -> {now.size}"
        return "modified while served" if now.mtime_ns != self.mtime_ns else "replaced"


class PinnedContent(MemoryContent):
    """A resident file; holds its Buffer so the registry knows the bytes are still in use."""

    def __init__(self, buffer: Buffer) -> None:
        super().__init__(buffer.view())
        self.buffer = buffer


class StreamedFile(Content):
    """A file too large to keep resident: pread on the thread pool from the descriptor opened."""

    def __init__(
        self, fd: int, info: os.stat_result, path: str, observer: SourceObserver | None = None
    ) -> None:
        self._observer = observer or NullObserver()
        self._fd = fd
        self._identity = _Identity.of(info)
        self._path = path
        self.size = info.st_size
        self._pending: concurrent.futures.Future[bytes] | None = None

    async def read(self, offset: int, length: int) -> bytes:
        if self._fd < 0:
            raise SourceUnavailable(f"{self._path}: read after close")
        pending = _pool_submit(self._read_checked, offset, length)
        self._pending = pending
        try:
            return await asyncio.wrap_future(pending)
        except SourceChanged:
            self._observer.source_error("changed")
            raise

    def _read_checked(self, offset: int, length: int) -> bytes:
        """pread, checked against the file as opened before and after (runs on the thread pool)."""
        try:
            self._check(os.fstat(self._fd))
            chunk = os.pread(self._fd, length, offset)
            self._check(os.fstat(self._fd))
        except OSError as exc:
            raise SourceUnavailable(f"{self._path}: read failed: {exc.strerror}") from exc
        expected = max(0, min(length, self.size - offset))
        if len(chunk) != expected:
            raise SourceChanged(f"{self._path}: {len(chunk)} bytes at {offset}, expected {expected}")
        return chunk

    def _check(self, info: os.stat_result) -> None:
        change = self._identity.changes(info)
        if change is not None:
            raise SourceChanged(f"{self._path}: file changed while served ({change})")

    async def aclose(self) -> None:
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        pending = self._pending
        if pending is not None and not pending.done():
            pending.add_done_callback(lambda _: _close_quietly(fd))  # a pread still uses it
        else:
            _close_quietly(fd)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


_POOL_LOCK = threading.Lock()
_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def _pool_submit(function: Callable[..., T], *args: object) -> concurrent.futures.Future[T]:
    """Run blocking file I/O on a thread pool shared by every local source (never on the loop)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="local-io")
        pool = _POOL
    return pool.submit(function, *args)


async def _in_pool(function: Callable[..., T], *args: object) -> T:
    return await asyncio.wrap_future(_pool_submit(function, *args))


# --- the source ---


@dataclass(frozen=True, slots=True)
class _Opened:
    fd: int
    info: os.stat_result


class LocalSource(Source):
    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        case_insensitive: bool = False,
        cache_bytes: int = 256 * 2**20,
        object_max: int = 64 * 2**20,
        observer: SourceObserver | None = None,
        use_openat2: bool | None = None,
    ) -> None:
        """``use_openat2``: None picks openat2 where the kernel has it; False forces the walk (tests)."""
        self._root = os.path.realpath(root)
        self.description = self._root
        self._root_fd = os.open(self._root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._resolver = _Resolver(self._root_fd, use_openat2=use_openat2, case_insensitive=case_insensitive)
        self._case_insensitive = case_insensitive
        self._object_max = object_max if cache_bytes <= 0 else min(object_max, cache_bytes)
        self._observer = observer or NullObserver()
        self.buffers: ResidentBuffers[_FileKey] = ResidentBuffers(cache_bytes, observer)
        self._fills: SingleFlight[_FileKey, Buffer] = SingleFlight()

    @property
    def resolver(self) -> str:
        """How names are confined: "openat2" or "openat walk"."""
        return self._resolver.method

    @property
    def index_builds(self) -> int:
        """Directory listings made for case-insensitive lookups (one per directory and mtime)."""
        return self._resolver.index_builds

    def open_now(self, path: str) -> Content | None:
        """The resident copy when it is in memory and still the file on disk; else None.

        Costs an open and an fstat (metadata, no file data).  A name that does not exist or is
        refused is answered here (a scanner's burst costs no thread-pool hop, and every request of
        it gets its ERROR before the next one from the same port replaces it); a case-insensitive
        miss (which may need a directory listing) and a file that is not resident are left to
        ``open``, which works on the thread pool.
        """
        try:
            opened = self._open_checked(path)
        except (FileNotFound, AccessDenied):
            if self._case_insensitive:
                return None
            raise
        except SourceError:
            return None
        try:
            buffer = self.buffers.get(_key(opened.info))
            return None if buffer is None else PinnedContent(buffer)
        finally:
            os.close(opened.fd)

    async def open(self, path: str) -> Content:
        opened = await _in_pool(self._open_checked, path)
        try:
            if opened.info.st_size > self._object_max:
                content: Content = StreamedFile(opened.fd, opened.info, path, self._observer)
                opened = _Opened(-1, opened.info)  # the descriptor now belongs to the StreamedFile
                return content
            return PinnedContent(await self._resident(opened, path))
        finally:
            if opened.fd >= 0:
                os.close(opened.fd)

    async def check(self) -> bool:
        try:
            return stat.S_ISDIR(os.fstat(self._root_fd).st_mode) and os.path.isdir(self._root)
        except OSError:
            return False

    async def aclose(self) -> None:
        self.buffers.clear()
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def _open_checked(self, path: str) -> _Opened:
        """Resolve and open a regular file (blocking: thread pool, or metadata only in open_now)."""
        fd = self._resolver.open(path)
        try:
            info = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise SourceUnavailable(f"fstat of {path!r} failed: {exc.strerror}") from exc
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise AccessDenied(f"not a regular file: {path!r}")
        return _Opened(fd, info)

    async def _resident(self, opened: _Opened, path: str) -> Buffer:
        key = _key(opened.info)
        held = self.buffers.get(key)
        if held is not None:
            return held

        def start_fill() -> asyncio.Future[Buffer]:
            # The shared fill owns its own descriptor: this caller may go away before it ends.
            try:
                fd = os.dup(opened.fd)
            except OSError as exc:  # EMFILE: out of descriptors
                raise SourceUnavailable(f"cannot read {path!r}: {exc.strerror}") from exc
            return asyncio.wrap_future(_pool_submit(_fill, fd, opened.info, path))

        try:
            buffer = await self._fills.run(key, start_fill)
        except SourceChanged:
            self._observer.source_error("changed")
            raise
        return self.buffers.put(key, buffer)


def _key(info: os.stat_result) -> _FileKey:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _fill(fd: int, info: os.stat_result, path: str) -> Buffer:
    """Read the whole file into one Buffer (thread pool); SourceChanged if it changes meanwhile."""
    try:
        buffer = Buffer(info.st_size)
        view = buffer.writable()
        offset = 0
        while offset < info.st_size:
            count = os.preadv(fd, [view[offset:]], offset)
            if count == 0:
                break
            offset += count
        change = _Identity.of(info).changes(os.fstat(fd))
    except OSError as exc:
        raise SourceUnavailable(f"reading {path!r} failed: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if offset != info.st_size or change is not None:
        raise SourceChanged(f"{path}: changed while read into memory ({change or 'truncated'})")
    return buffer
