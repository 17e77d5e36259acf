"""Several sources over one another: the first that has the name serves it.

``edgetftp /srv/tftp,https://boot.example/tftp/`` serves the baked-in iPXE binaries from the
directory and everything else (per-machine scripts) from the origin.  A layer's "not found" falls
through to the next one; any other failure (a timeout, a 5xx, "access denied") ends the lookup
there, so a file is never served from a lower layer because the upper one was down, unless
``errors_fall_through`` is set.  Each layer resolves completely (status and size) before the next is
asked, so the server still answers only once the file is known.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from loguru import logger

from edgetftp.sources.base import (
    Content,
    FileNotFound,
    RequestContext,
    Source,
    SourceError,
    SourceStatus,
)


class LayeredSource(Source):
    def __init__(self, layers: Sequence[Source], *, errors_fall_through: bool = False) -> None:
        if not layers:
            raise ValueError("a layered source needs at least one layer")
        self.layers = list(layers)
        self.errors_fall_through = errors_fall_through
        self.description = " over ".join(layer.description for layer in self.layers)

    async def open(self, path: str) -> Content:
        return await self.open_for(path, RequestContext(client=("", 0), filename=path))

    def open_now(self, path: str) -> Content | None:
        return self.open_now_for(path, RequestContext(client=("", 0), filename=path))

    def open_now_for(self, path: str, context: RequestContext) -> Content | None:
        """An answer from memory if every layer above the one that has the file answers from memory."""
        missing: FileNotFound | None = None
        for layer in self.layers:
            try:
                content = layer.open_now_for(path, context)
            except FileNotFound as exc:
                missing = exc
                continue
            except SourceError:
                if self.errors_fall_through:
                    return None  # let open_for walk the layers and log what failed
                raise
            return content  # found, or None: this layer must be awaited
        assert missing is not None
        raise missing

    async def open_for(self, path: str, context: RequestContext) -> Content:
        failures: list[SourceError] = []
        missing: FileNotFound | None = None
        for layer in self.layers:
            try:
                return await layer.open_for(path, context)
            except FileNotFound as exc:
                missing = exc
            except SourceError as exc:
                if not self.errors_fall_through:
                    raise
                logger.warning("layer {} failed for {}, trying the next: {}", layer.description, path, exc)
                failures.append(exc)
        if failures:
            raise failures[0]  # a layer failed and none below had the file: report the failure
        assert missing is not None
        raise missing

    async def start(self) -> None:
        for layer in self.layers:
            await layer.start()

    async def first_contact(self) -> SourceStatus:
        """Every layer's start-up check: healthy when all are, fatal when any is."""
        statuses = [await layer.first_contact() for layer in self.layers]
        return SourceStatus(
            healthy=all(status.healthy for status in statuses),
            fatal=any(status.fatal for status in statuses),
            detail="; ".join(status.detail for status in statuses if status.detail),
        )

    async def check(self) -> bool:
        results = await asyncio.gather(*(layer.check() for layer in self.layers))
        return all(results)

    async def aclose(self) -> None:
        for layer in self.layers:
            await layer.aclose()
