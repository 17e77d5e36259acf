"""Settings: command-line flags and ``EDGETFTP_*`` environment variables, validated at start-up.

The pydantic model below is the single description of every setting.  The environment is read for
exactly the names it documents (``env_names``: ``EDGETFTP_<NAME>``, plus the AWS SDK's own variables
as fallbacks), and the command line is an argparse parser generated from the same model
(``build_parser``), so that ``--help`` shows metavars, the environment variable and one default per
option, and no flag exists that the README does not list.  Flags win over the environment.
(pydantic-settings did both once; importing it cost more start-up time than the whole server.)
Every check that can fail does so here, before a socket is bound, with one line that names the
setting (see ``load_settings``).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from edgetftp import __version__
from edgetftp.privileges import PrivilegeError, resolve_identity
from edgetftp.transport.config import PortMode

DEFAULT_PORT = 69
ENV_PREFIX = "EDGETFTP_"
_HEADER_SPLIT = re.compile(r"\n|,(?=\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+:)")
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(text: str, default_port: int | None = DEFAULT_PORT) -> ListenAddress:
    """Parse ``HOST:PORT``, ``[v6]:PORT``, a bare host or a bare IPv6 address.

    With ``default_port=None`` the port is required (a bare host is refused).
    """
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
    elif default_port is None:
        raise ValueError(f"missing port in {text!r}: use HOST:PORT or [IPv6]:PORT (TFTP's port is 69)")
    else:
        port = default_port
    if not host:
        raise ValueError(f"missing host in {text!r}")
    if ":" in host:
        ipaddress.IPv6Address(host.split("%")[0])  # raises ValueError with a clear text
    return ListenAddress(host, port)


def _meta(metavar: str) -> dict[str, Any]:
    """Field(json_schema_extra=...) that names the value in --help (``HOST:PORT``, ``SECONDS``)."""
    return {"metavar": metavar}


class Settings(BaseModel):
    """edgetftp: a read-only TFTP server for network boot, single-port by default."""

    model_config = ConfigDict(extra="ignore", validate_default=True)

    source: str = Field(
        None,  # type: ignore[assignment]  # optional on the command line when EDGETFTP_SOURCE is set
        description=(
            "a directory of files to serve, s3://bucket/prefix/ or http(s)://origin/prefix/; several, "
            "comma-separated, are layers: the first that has a file serves it"
        ),
        json_schema_extra=_meta("SOURCE"),
    )

    # --- network ---
    listen: list[str] = Field(
        ["0.0.0.0:69"],
        description="UDP addresses to serve on, repeatable or comma-separated: HOST:PORT, [IPv6]:PORT or "
        "NAME:PORT (0.0.0.0:69,[::]:69; fly-global-services:69)",
        json_schema_extra=_meta("HOST:PORT"),
    )
    port_mode: Literal["single", "per-transfer"] = Field(
        "single",
        description="single: all replies from the listening port; per-transfer: RFC 1350 TIDs",
        json_schema_extra=_meta("{single,per-transfer}"),
    )
    mtu: int | None = Field(
        None,
        ge=576,
        le=65535,
        description="path MTU cap for blksize when below the interface's (edge tunnels)",
        json_schema_extra=_meta("BYTES"),
    )
    max_blksize: int = Field(
        65464, ge=512, le=65464, description="largest blksize ever granted", json_schema_extra=_meta("BYTES")
    )
    max_window: int = Field(
        64,
        ge=1,
        le=1024,
        description="largest RFC 7440 windowsize granted",
        json_schema_extra=_meta("BLOCKS"),
    )
    anticipate: int = Field(
        256,
        ge=0,
        le=1024,
        description=(
            "most blocks sent ahead of the last ACK for clients without windowsize (0 = lock-step); "
            "the window starts at 2 blocks and triples per clean round trip up to it "
            "(beyond 64 only when paced: a shortest round trip of 5 ms or more, and no queue building)"
        ),
        json_schema_extra=_meta("BLOCKS"),
    )

    user: str | None = Field(
        None,
        description="USER[:GROUP] (names or numbers) to switch to once the sockets are bound (needs root)",
    )

    # --- retransmission ---
    timeout: float = Field(
        1.0,
        gt=0.05,
        le=255,
        description="seconds before the first retransmission",
        json_schema_extra=_meta("SECONDS"),
    )
    max_timeout: float = Field(
        4.0,
        gt=0.05,
        le=255,
        description="cap on the retransmission timeout after backoff",
        json_schema_extra=_meta("SECONDS"),
    )
    retries: int = Field(
        5,
        ge=1,
        le=50,
        description="retransmissions of one packet before giving up",
        json_schema_extra=_meta("N"),
    )
    max_silence: float = Field(
        30.0,
        ge=1,
        le=3600,
        description=(
            "seconds of client silence before a transfer is given up, whatever timeout the client "
            "negotiated (a client that never ACKed gets at most the server's own retry schedule)"
        ),
        json_schema_extra=_meta("SECONDS"),
    )

    # --- limits and policy ---
    max_sessions: int = Field(
        2000, ge=1, le=1_000_000, description="concurrent transfers in total", json_schema_extra=_meta("N")
    )
    max_sessions_per_client: int = Field(
        512,
        ge=1,
        le=1_000_000,
        description=(
            "concurrent transfers per client (IPv4 address or IPv6 prefix; a rack behind one NAT shares it)"
        ),
        json_schema_extra=_meta("N"),
    )
    client_rate: int = Field(
        12_500_000,
        ge=0,
        description=(
            "bytes per second sent to one client (address, or IPv6 prefix), at most, with a burst of one "
            "second's worth (bounds blind-ACK reflection; 0 = no limit)"
        ),
        json_schema_extra=_meta("BYTES/S"),
    )
    client_ipv6_prefix: int = Field(
        64,
        ge=1,
        le=128,
        description="IPv6 clients share the per-client limits (sessions, rate) per prefix of this length",
        json_schema_extra=_meta("BITS"),
    )
    allow_extensions: str = Field(
        "",
        description="comma-separated file extensions allowed (.ipxe,.efi,.kpxe); unset allows all",
        json_schema_extra=_meta("EXT[,EXT...]"),
    )
    case_insensitive: bool = Field(
        False, description="match file names case-insensitively (Windows boot files)"
    )
    drain_timeout: float = Field(
        8.0,
        ge=0,
        le=300,
        description="seconds running transfers get to finish after SIGTERM/SIGINT",
        json_schema_extra=_meta("SECONDS"),
    )

    # --- observability ---
    log_level: Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO",
        description="least severe level logged: trace, debug, info, warning or error (any case)",
        json_schema_extra=_meta("LEVEL"),
    )
    log_json: bool = Field(False, description="log one flat JSON object per line (ECS field names)")
    http_listen: str | None = Field(
        None,
        description="TCP address for /healthz and /metrics over HTTP (off when unset)",
        json_schema_extra=_meta("HOST:PORT"),
    )

    # --- S3 source ---
    region: str | None = Field(
        None,
        validation_alias=AliasChoices("region", "EDGETFTP_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
        description="AWS region of the bucket (unset: the AWS SDK's own lookup)",
        json_schema_extra=_meta("REGION"),
    )
    endpoint_url: str | None = Field(
        None,
        validation_alias=AliasChoices("endpoint_url", "EDGETFTP_ENDPOINT_URL", "AWS_ENDPOINT_URL"),
        description="S3-compatible endpoint (MinIO, R2, ...)",
        json_schema_extra=_meta("URL"),
    )
    force_path_style: bool = Field(False, description="path-style S3 addressing (most S3-compatible stores)")
    dualstack: bool = Field(True, description="use AWS dual-stack endpoints (ignored with --endpoint-url)")
    accelerate: bool = Field(False, description="use S3 Transfer Acceleration endpoints")
    sign_request: bool = Field(True, description="sign S3 requests (turn off for public buckets)")
    debug_api: bool = Field(False, description="log every S3 API call")
    s3_timeout: float = Field(
        5.0, gt=0, le=120, description="seconds for an S3 connect or read", json_schema_extra=_meta("SECONDS")
    )
    s3_retries: int = Field(
        3,
        ge=1,
        le=10,
        description="attempts per S3 call (botocore standard retries)",
        json_schema_extra=_meta("N"),
    )
    s3_pool: int = Field(
        64, ge=1, le=1024, description="S3 HTTP connections kept open", json_schema_extra=_meta("N")
    )
    cache_bytes: int = Field(
        256 * 2**20,
        ge=0,
        description="bytes of files kept in memory, shared by all transfers (LRU)",
        json_schema_extra=_meta("BYTES"),
    )
    cache_object_max: int = Field(
        64 * 2**20,
        ge=0,
        description="largest file kept in memory; larger ones are streamed",
        json_schema_extra=_meta("BYTES"),
    )
    cache_ttl: float = Field(
        60.0,
        ge=0,
        description="seconds before a cached object is revalidated by ETag",
        json_schema_extra=_meta("SECONDS"),
    )
    negative_cache_ttl: float = Field(
        10.0, ge=0, description="seconds a missing key is remembered", json_schema_extra=_meta("SECONDS")
    )
    s3_start_anyway: bool = Field(
        False,
        description="start even when S3 credentials are missing or the bucket does not exist or refuses "
        "them (/healthz stays unhealthy until S3 answers)",
    )

    # --- HTTP origin source and layers ---
    origin_header: list[str] = Field(
        [],
        description=(
            "'Name: value' header sent with every origin request, repeatable (env: one per line; "
            "keep secrets in EDGETFTP_ORIGIN_HEADER)"
        ),
        json_schema_extra=_meta("HEADER"),
    )
    origin_timeout: float = Field(
        5.0,
        gt=0,
        le=120,
        description="seconds for an origin connect, response headers, or body chunk",
        json_schema_extra=_meta("SECONDS"),
    )
    origin_attempts: int = Field(
        2,
        ge=1,
        le=10,
        description="tries per origin request on connection failures and 502/503/504",
        json_schema_extra=_meta("N"),
    )
    origin_pool: int = Field(
        32, ge=1, le=1024, description="HTTP connections to the origin at most", json_schema_extra=_meta("N")
    )
    origin_buffer_max: int = Field(
        8 * 2**20,
        ge=0,
        description="origin bodies up to this are read before answering (tsize, caching); larger ones stream",
        json_schema_extra=_meta("BYTES"),
    )
    origin_stale_if_error: float = Field(
        300.0,
        ge=0,
        description="seconds past expiry a cached origin answer may stand in for a failing origin",
        json_schema_extra=_meta("SECONDS"),
    )
    origin_cross_host_redirects: bool = Field(
        False, description="follow origin redirects to another host (refused by default)"
    )
    layer_errors_fall_through: bool = Field(
        False, description="with several SOURCE layers, try the next layer when one fails (not only on 404)"
    )

    @field_validator("listen", mode="before")
    @classmethod
    def _split_listen(cls, value: object) -> object:
        """``--listen a --listen b``, ``--listen a,b`` and ``EDGETFTP_LISTEN=a,b`` all give [a, b]."""
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            return value
        return [part.strip() for item in items for part in str(item).split(",") if part.strip()]

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("no address given: use HOST:PORT")
        for text in value:
            parse_listen_list(text)
        return value

    @field_validator("http_listen")
    @classmethod
    def _check_http_listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_host_port(value, default_port=None)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("user")
    @classmethod
    def _check_user(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None  # EDGETFTP_USER= (empty) turns the image's default off
        if value is not None:
            try:
                resolve_identity(value)
            except PrivilegeError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("allow_extensions")
    @classmethod
    def _check_extensions(cls, value: str) -> str:
        for ext in split_extensions(value):
            if "/" in ext or "\\" in ext or "\0" in ext:
                raise ValueError(f"not a file extension: {ext!r}")
        return value

    @field_validator("origin_header", mode="before")
    @classmethod
    def _split_origin_headers(cls, value: object) -> object:
        # The environment gives one string (a header per line); the command line joins repeated
        # flags with commas, so a comma starts a new header only where "Name:" follows.
        if isinstance(value, str):
            return [part.strip() for part in _HEADER_SPLIT.split(value) if part.strip()]
        return value

    @field_validator("origin_header")
    @classmethod
    def _check_origin_headers(cls, value: list[str]) -> list[str]:
        from edgetftp.sources.http import parse_header_line

        for line in value:
            parse_header_line(line)
        return value

    @field_validator("source", mode="before")
    @classmethod
    def _check_source(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("missing: give a directory or s3://bucket/prefix/ (or set EDGETFTP_SOURCE)")
        if not value.strip():
            raise ValueError("empty: give a directory, s3://bucket/prefix/ or http(s)://origin/prefix/")
        layers = split_layers(value)
        if not layers:
            raise ValueError("empty: give a directory, s3://bucket/prefix/ or http(s)://origin/prefix/")
        for layer in layers:
            _check_layer(layer)
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
    def listen_addresses(self) -> list[ListenAddress]:
        return [address for text in self.listen for address in parse_listen_list(text)]

    @property
    def reply_ports(self) -> PortMode:
        return PortMode(self.port_mode)

    @property
    def http_address(self) -> ListenAddress | None:
        return parse_host_port(self.http_listen, default_port=None) if self.http_listen else None

    @property
    def extensions(self) -> frozenset[str]:
        return frozenset(split_extensions(self.allow_extensions))

    @property
    def source_layers(self) -> list[str]:
        """The SOURCE layers in order (one for a plain SOURCE)."""
        return split_layers(self.source)


def _check_layer(value: str) -> None:
    """One SOURCE layer: an existing directory, s3://bucket/prefix/ or http(s)://host/prefix/."""
    if "://" in value:
        scheme = value.split("://", 1)[0].lower()
        if scheme in ("http", "https"):
            _check_origin_url(value)
            return
        if scheme != "s3":
            raise ValueError(f"unknown scheme {scheme!r}: use a directory, s3://, http:// or https://")
        bucket = value.split("://", 1)[1].split("/", 1)[0]
        if not bucket:
            raise ValueError("missing bucket name in s3://bucket/prefix/")
        return
    root = Path(value)
    try:
        is_dir = root.is_dir()
    except OSError as exc:  # a parent that cannot be searched: PermissionError, not False
        raise ValueError(f"cannot reach {value}: {exc.strerror}") from None
    if not is_dir:
        raise ValueError(f"not a directory: {value}")
    if not os.access(root, os.R_OK | os.X_OK):
        raise ValueError(f"cannot search and list directory {value} (needs r and x permission)")
    try:
        next(iter(root.iterdir()), None)
    except OSError as exc:
        raise ValueError(f"cannot read directory {value}: {exc.strerror}") from exc
    return


def _check_origin_url(value: str) -> None:
    from edgetftp.sources.http import parse_origin_url  # no aiohttp: parsing only

    parse_origin_url(value)


def split_layers(value: str) -> list[str]:
    """``"/srv/tftp, https://o/boot/"`` -> ``["/srv/tftp", "https://o/boot/"]`` (the first layer wins)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_listen_list(text: str) -> list[ListenAddress]:
    """``"HOST:PORT[,HOST:PORT...]"``: one or more UDP addresses, each with its port."""
    addresses = [parse_host_port(part, default_port=None) for part in text.split(",") if part.strip()]
    if not addresses:
        raise ValueError("empty address: use HOST:PORT")
    return addresses


def split_extensions(value: str) -> list[str]:
    """``".ipxe, efi"`` -> ``[".ipxe", ".efi"]`` (lower case, leading dot added)."""
    parts = [part.strip().lower() for part in value.split(",")]
    return [part if part.startswith(".") else "." + part for part in parts if part]


class SettingsFailure(Exception):
    """A setting is invalid; the message is one line that names it."""


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    """Parse flags and environment; raise SettingsFailure with one line per bad setting.

    ``--help`` and ``--version`` print and exit 0 (argparse's SystemExit).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    given = vars(build_parser().parse_args(args))  # only the flags on the command line
    try:
        return Settings(**{**from_environment(os.environ), **given})
    except ValidationError as exc:
        raise SettingsFailure(_describe_validation_error(exc)) from None


def from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings given as environment variables, by field name (the first documented name set)."""
    values = {}
    for name, field in Settings.model_fields.items():
        for env in env_names(name, field):
            if env in environ:
                values[name] = environ[env]
                break
    return values


# --- the command line, generated from the model ---------------------------------------------------


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (SettingsFailure -> exit 2), not usage plus a message."""

    def error(self, message: str) -> NoReturn:
        raise SettingsFailure(f"invalid command line: {message} (see edgetftp --help)")


def option_flag(name: str, field: FieldInfo) -> str:
    """The one flag of a setting: ``--max-blksize``; a boolean that is on by default: ``--no-dualstack``."""
    flag = name.replace("_", "-")
    return f"--no-{flag}" if field.default is True else f"--{flag}"


def env_names(name: str, field: FieldInfo) -> list[str]:
    """The environment variables of a setting, ours first (``AWS_REGION`` is a documented fallback)."""
    names = [ENV_PREFIX + name.upper()]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        names += [c for c in alias.choices if isinstance(c, str) and c.isupper() and c not in names]
    return names


def default_text(field: FieldInfo) -> str:
    """The default as the README and --help show it: ``on``/``off``, ``unset``, or the value."""
    if isinstance(field.default, bool):
        return "on" if field.default else "off"
    if field.default in (None, "", []):
        return "unset"
    if isinstance(field.default, list):
        return ",".join(str(item) for item in field.default)
    return str(field.default)


def metavar(name: str, field: FieldInfo) -> str:
    extra = field.json_schema_extra
    value = extra.get("metavar") if isinstance(extra, dict) else None
    return str(value) if value else name.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="edgetftp",
        description="A read-only TFTP server for network boot (RRQ only), single-port by default.",
        epilog="Every option is also an environment variable (shown); flags win over the environment. "
        "A bad value stops the server at start-up with one line naming the setting (exit 2).",
        allow_abbrev=False,  # no prefix aliases: --list is not --listen
        formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=34, width=100),
    )
    source = Settings.model_fields["source"]
    parser.add_argument(
        "source",
        nargs="?",
        metavar="SOURCE",
        default=argparse.SUPPRESS,
        help=_escape(f"{source.description} (env {ENV_PREFIX}SOURCE)"),
    )
    parser.add_argument("--version", action="version", version=f"edgetftp {__version__}")
    for name, field in Settings.model_fields.items():
        if name != "source":
            _add_option(parser, name, field)
    return parser


def _add_option(parser: argparse.ArgumentParser, name: str, field: FieldInfo) -> None:
    flag = option_flag(name, field)
    envs = ", ".join(env_names(name, field))
    if isinstance(field.default, bool):
        action = "store_false" if field.default else "store_true"
        what = f"turn off: {field.description}" if field.default else field.description
        text = f"{what} (env {envs}; default: {default_text(field)})"
        parser.add_argument(flag, dest=name, action=action, default=argparse.SUPPRESS, help=_escape(text))
        return
    text = f"{field.description} (env {envs}; default: {default_text(field)})"
    repeatable = isinstance(field.default, list)  # --origin-header A --origin-header B
    parser.add_argument(
        flag,
        dest=name,
        metavar=metavar(name, field),
        action="append" if repeatable else "store",
        default=argparse.SUPPRESS,
        help=_escape(text),
    )


def _escape(text: str | None) -> str:
    return (text or "").replace("%", "%%")  # argparse %-formats help texts


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
