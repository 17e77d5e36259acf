"""Settings: command-line flags and ``EDGETFTP_*`` environment variables, validated at start-up.

pydantic-settings parses both (flags win over the environment).  Every check that can fail does so
here, before a socket is bound, with one line that names the setting (see ``load_settings``).
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, CliPositionalArg, SettingsConfigDict, SettingsError

DEFAULT_PORT = 69


class PortMode(StrEnum):
    """Where replies leave from."""

    SINGLE = "single"  # every reply from the listening socket (edge networks need this)
    PER_TRANSFER = "per-transfer"  # RFC 1350: a fresh ephemeral port (TID) per transfer


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(text: str, default_port: int = DEFAULT_PORT) -> ListenAddress:
    """Parse ``HOST:PORT``, ``[v6]:PORT``, a bare host or a bare IPv6 address."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"expected [IPv6]:PORT, got {text!r}")
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:  # a bare IPv6 address
        host, port_text = text, ""
    else:
        host, _, port_text = text.partition(":")
    if port_text:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"port must be 0..65535, got {port_text!r}")
        port = int(port_text)
    else:
        port = default_port
    if not host:
        raise ValueError(f"missing host in {text!r}")
    if ":" in host:
        ipaddress.IPv6Address(host.split("%")[0])  # raises ValueError with a clear text
    return ListenAddress(host, port)


class Settings(BaseSettings):
    """edgetftp: a read-only TFTP server for network boot, single-port by default."""

    model_config = SettingsConfigDict(
        env_prefix="EDGETFTP_",
        cli_prog_name="edgetftp",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
        cli_avoid_json=True,
        cli_exit_on_error=False,
        cli_enforce_required=False,
        extra="ignore",
        validate_default=True,
    )

    source: CliPositionalArg[str] = Field(
        None,  # type: ignore[assignment]  # optional on the command line when EDGETFTP_SOURCE is set
        description="a directory of files to serve, or s3://bucket/prefix/ (env EDGETFTP_SOURCE)",
    )

    # --- network ---
    listen: str = Field(
        "0.0.0.0:69",
        description="UDP address to serve on: HOST:PORT, [IPv6]:PORT, or a name such as fly-global-services",
    )
    port_mode: Literal["single", "per-transfer"] = Field(
        "single", description="single: all replies from the listening port; per-transfer: RFC 1350 TIDs"
    )
    mtu: int | None = Field(
        None,
        ge=576,
        le=65535,
        description="path MTU cap for blksize when below the interface's (edge tunnels)",
    )
    max_blksize: int = Field(65464, ge=512, le=65464, description="largest blksize ever granted")
    max_window: int = Field(64, ge=1, le=1024, description="largest RFC 7440 windowsize granted")
    anticipate: int = Field(
        64,
        ge=0,
        le=1024,
        description=(
            "most blocks sent ahead of the last ACK for clients without windowsize (0 = lock-step); "
            "the window starts at 2 blocks and triples per clean round trip up to it"
        ),
    )

    # --- retransmission ---
    timeout: float = Field(1.0, gt=0.05, le=255, description="seconds before the first retransmission")
    max_timeout: float = Field(
        4.0, gt=0.05, le=255, description="cap on the retransmission timeout after backoff"
    )
    retries: int = Field(5, ge=1, le=50, description="retransmissions of one packet before giving up")
    max_silence: float = Field(
        30.0,
        ge=1,
        le=3600,
        description=(
            "seconds of client silence before a transfer is given up, whatever timeout the client "
            "negotiated (a client that never ACKed gets at most the server's own retry schedule)"
        ),
    )

    # --- limits and policy ---
    max_sessions: int = Field(2000, ge=1, le=1_000_000, description="concurrent transfers in total")
    max_sessions_per_client: int = Field(
        128,
        ge=1,
        le=1_000_000,
        description="concurrent transfers per client IP address (a lab behind one NAT shares it)",
    )
    client_rate: int = Field(
        4 * 2**20,
        ge=0,
        description=(
            "bytes per second sent to one client address, at most, with a burst of one second's worth "
            "(bounds blind-ACK reflection; 0 = no limit)"
        ),
    )
    allow_extensions: str = Field(
        "", description="comma-separated file extensions allowed (.ipxe,.efi,.kpxe); empty allows all"
    )
    case_insensitive: bool = Field(
        False, description="match file names case-insensitively (Windows boot files)"
    )
    drain_timeout: float = Field(
        8.0, ge=0, le=300, description="seconds running transfers get to finish after SIGTERM/SIGINT"
    )

    # --- observability ---
    log_level: Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")
    log_json: bool = Field(False, description="log one JSON object per line")
    http_listen: str | None = Field(
        None, description="HOST:PORT for /healthz and /metrics over HTTP (off when unset)"
    )

    # --- S3 source ---
    region: str | None = Field(
        None,
        validation_alias=AliasChoices("region", "EDGETFTP_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
        description="AWS region of the bucket (default: AWS_REGION or the SDK's own lookup)",
    )
    endpoint_url: str | None = Field(
        None,
        validation_alias=AliasChoices("endpoint_url", "EDGETFTP_ENDPOINT_URL", "AWS_ENDPOINT_URL"),
        description="S3-compatible endpoint (MinIO, R2, ...); also AWS_ENDPOINT_URL",
    )
    force_path_style: bool = Field(False, description="path-style S3 addressing (most S3-compatible stores)")
    dualstack: bool = Field(True, description="use AWS dual-stack endpoints (ignored with --endpoint-url)")
    accelerate: bool = Field(False, description="use S3 Transfer Acceleration endpoints")
    sign_request: bool = Field(True, description="sign S3 requests; --no-sign-request for public buckets")
    debug_api: bool = Field(False, description="log every S3 API call")
    s3_timeout: float = Field(5.0, gt=0, le=120, description="seconds for an S3 connect or read")
    s3_retries: int = Field(3, ge=1, le=10, description="attempts per S3 call (botocore standard retries)")
    s3_pool: int = Field(64, ge=1, le=1024, description="S3 HTTP connections kept open")
    cache_bytes: int = Field(
        256 * 2**20, ge=0, description="bytes of files kept in memory, shared by all transfers (LRU)"
    )
    cache_object_max: int = Field(
        64 * 2**20, ge=0, description="largest file kept in memory; larger ones are streamed"
    )
    cache_ttl: float = Field(60.0, ge=0, description="seconds before a cached object is revalidated by ETag")
    negative_cache_ttl: float = Field(10.0, ge=0, description="seconds a missing key is remembered")

    @field_validator("listen", "http_listen")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_host_port(value)
        return value

    @field_validator("allow_extensions")
    @classmethod
    def _check_extensions(cls, value: str) -> str:
        for ext in split_extensions(value):
            if "/" in ext or "\\" in ext or "\0" in ext:
                raise ValueError(f"not a file extension: {ext!r}")
        return value

    @field_validator("source", mode="before")
    @classmethod
    def _check_source(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("missing: give a directory or s3://bucket/prefix/ (or set EDGETFTP_SOURCE)")
        if "://" in value:
            scheme = value.split("://", 1)[0].lower()
            if scheme != "s3":
                raise ValueError(f"unknown scheme {scheme!r}: use a directory or s3://bucket/prefix/")
            bucket = value.split("://", 1)[1].split("/", 1)[0]
            if not bucket:
                raise ValueError("missing bucket name in s3://bucket/prefix/")
            return value
        root = Path(value)
        if not root.is_dir():
            raise ValueError(f"not a directory: {value}")
        try:
            next(iter(root.iterdir()), None)
        except OSError as exc:
            raise ValueError(f"cannot read directory {value}: {exc.strerror}") from exc
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        # "name: text" lets _describe_validation_error name the setting at fault.
        if self.max_sessions_per_client > self.max_sessions:
            raise ValueError(f"max_sessions_per_client: must not exceed --max-sessions ({self.max_sessions})")
        if self.max_timeout < self.timeout:
            raise ValueError(f"max_timeout: must not be below --timeout ({self.timeout})")
        if self.cache_object_max > self.cache_bytes > 0:
            raise ValueError(f"cache_object_max: must not exceed --cache-bytes ({self.cache_bytes})")
        return self

    # --- derived values ---
    @property
    def listen_address(self) -> ListenAddress:
        return parse_host_port(self.listen)

    @property
    def reply_ports(self) -> PortMode:
        return PortMode(self.port_mode)

    @property
    def http_address(self) -> ListenAddress | None:
        return parse_host_port(self.http_listen, default_port=8080) if self.http_listen else None

    @property
    def extensions(self) -> frozenset[str]:
        return frozenset(split_extensions(self.allow_extensions))

    @property
    def is_s3(self) -> bool:
        return self.source.lower().startswith("s3://")


def split_extensions(value: str) -> list[str]:
    """``".ipxe, efi"`` -> ``[".ipxe", ".efi"]`` (lower case, leading dot added)."""
    parts = [part.strip().lower() for part in value.split(",")]
    return [part if part.startswith(".") else "." + part for part in parts if part]


class SettingsFailure(Exception):
    """A setting is invalid; the message is one line that names it."""


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    """Parse flags and environment; raise SettingsFailure with one line per bad setting."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return Settings(_cli_parse_args=args)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise SettingsFailure(_describe_validation_error(exc)) from None
    except SettingsError as exc:
        raise SettingsFailure(f"invalid command line: {exc}") from None


def _describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        location = [str(part) for part in error["loc"] if isinstance(part, str)]
        message = error["msg"].removeprefix("Value error, ")
        if not location:
            name, _, message = message.partition(": ")
        else:
            name = location[0]
        if name == "source":
            lines.append(f"invalid SOURCE (EDGETFTP_SOURCE): {message}")
        else:
            flag = "--" + name.replace("_", "-")
            lines.append(f"invalid setting {flag} (EDGETFTP_{name.upper()}): {message}")
    return "\n".join(lines)
