"""edgetftp: a read-only, single-port TFTP server for booting machines over the internet."""

__version__ = "0.1.0"
