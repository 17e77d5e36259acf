"""Where served files come from: a local directory or an S3 prefix, behind one interface."""

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

__all__ = [
    "AccessDenied",
    "Content",
    "FileNotFound",
    "MemoryContent",
    "NullObserver",
    "Source",
    "SourceChanged",
    "SourceError",
    "SourceObserver",
    "SourceUnavailable",
]
