"""The asyncio transport, in layers (each readable in one sitting, each tested in-process):

- ``server``: listeners in, sessions out; routes datagrams as ``protocol.demux`` decides and admits
  requests as ``admission`` decides.
- ``listener``: one listening socket read in adaptive batches into a shared buffer; its MTU.
- ``session``: the per-session driver (resolve the file, send what the core queued, arm its timer,
  feed it from the source).
- ``transfer_sockets``: per-transfer mode's own sockets (ERROR 5 to strangers; EMFILE -> busy).
- ``timers``: one heap and one loop timer for every session (an ACK costs no timer operation).
- ``sender``: datagrams out (UDP GSO for windows, IP_PKTINFO/IPV6_PKTINFO reply-from-arrival).
- ``admission``: who may start a transfer (silence, not an ERROR, when full).
- ``config``: plain settings (``ServerConfig``, ``PortMode``) and the ``Observer`` protocol.

Nothing here imports settings.py (pydantic): cli.py maps Settings onto ``ServerConfig``.
"""

from edgetftp.transport.config import NullObserver, Observer, PortMode, ServerConfig
from edgetftp.transport.server import TftpServer

__all__ = ["NullObserver", "Observer", "PortMode", "ServerConfig", "TftpServer"]
