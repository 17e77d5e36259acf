"""Serving as an unprivileged user: bind port 69 as root, then drop to ``--user`` for good.

The classic daemon order (tftpd-hpa's ``-u``, dnsmasq): every listening socket is bound first, then
supplementary groups are cleared, then the group, then the user is switched (setuid last: after it
the process could no longer change its group).  The server reads its first datagram only after that.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass


class PrivilegeError(Exception):
    """``--user`` cannot be applied; the message says why in one line."""


@dataclass(frozen=True, slots=True)
class Identity:
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"uid {self.uid}, gid {self.gid}"


def resolve_identity(spec: str) -> Identity:
    """``USER[:GROUP]``, names or numbers, to ids.  Without GROUP: the user's primary group."""
    user_text, _, group_text = spec.strip().partition(":")
    if not user_text:
        raise PrivilegeError(f"expected USER[:GROUP], got {spec!r}")
    uid, primary_gid = _resolve_user(user_text)
    if group_text:
        return Identity(uid, _resolve_group(group_text))
    if primary_gid is None:
        raise PrivilegeError(f"user {user_text} has no entry in /etc/passwd: give the group too (USER:GROUP)")
    return Identity(uid, primary_gid)


def _resolve_user(text: str) -> tuple[int, int | None]:
    """The uid and, when the user is known to the system, its primary gid."""
    if text.isdigit():
        uid = int(text)
        try:
            return uid, pwd.getpwuid(uid).pw_gid
        except KeyError:
            return uid, None  # a bare number is allowed: containers often have no passwd entry
    try:
        entry = pwd.getpwnam(text)
    except KeyError:
        raise PrivilegeError(f"no such user: {text}") from None
    return entry.pw_uid, entry.pw_gid


def _resolve_group(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise PrivilegeError(f"no such group: {text}") from None


def is_current(identity: Identity) -> bool:
    """Already running as ``identity`` (``docker run --user 65532:65532`` with the image's default)."""
    return os.getresuid() == (identity.uid,) * 3 and os.getresgid() == (identity.gid,) * 3


def check_can_switch(identity: Identity) -> None:
    """Refuse early (before binding) when this process cannot become ``identity``."""
    if os.geteuid() != 0 and not is_current(identity):
        raise PrivilegeError(f"switching to {identity} needs root; this process runs as uid {os.geteuid()}")


def drop_privileges(user: Identity | str) -> Identity:
    """Become ``user`` (an Identity or ``USER[:GROUP]``) for good, or raise PrivilegeError: the
    server must not serve as root.  Returns the identity now in effect."""
    identity = user if isinstance(user, Identity) else resolve_identity(user)
    check_can_switch(identity)
    if is_current(identity) and identity.uid != 0:
        _verify(identity)  # nothing to switch; still make sure no extra group or privilege is left
        return identity
    try:
        os.setgroups([])
        os.setgid(identity.gid)
        os.setuid(identity.uid)  # real, effective and saved uid: there is no way back
    except OSError as exc:
        raise PrivilegeError(f"cannot switch to {identity}: {exc.strerror}") from None
    _verify(identity)
    return identity


def _verify(identity: Identity) -> None:
    """Trust but check: every id changed, no group is left over, and root cannot be regained."""
    if os.getresuid() != (identity.uid,) * 3 or os.getresgid() != (identity.gid,) * 3:
        raise PrivilegeError(f"switching to {identity} left uids {os.getresuid()} gids {os.getresgid()}")
    if set(os.getgroups()) - {identity.gid}:
        raise PrivilegeError(f"supplementary groups remain after switching: {os.getgroups()}")
    if identity.uid != 0 and _can_regain_root():
        raise PrivilegeError(f"after switching to {identity} the process could become root again")


def _can_regain_root() -> bool:
    try:
        os.setuid(0)
    except PermissionError:
        return False
    return True
