"""What a front door open to the network (the web app, the API server) may accept from its clients: only the
models on offer, and no listening beyond this machine without authentication. Source fetching has its own guard
(`vlm_app.media.sources`, configured by `Limits.for_remote_clients`). Light: no torch, no gradio.
"""

from __future__ import annotations

import ipaddress
import socket

from vlm_app.errors import ExposureError, NotOfferedError


def offered_model(name: str, offered: list[str] | tuple[str, ...]) -> str:
    """`name` if it is one of the models on offer; NotOfferedError naming them otherwise (never a folder or hub
    id the client chose)."""
    if isinstance(name, str) and name in offered:
        return name
    raise NotOfferedError(f"model {str(name)[:200]!r} is not on offer here; choose one of: {', '.join(offered)}")


def is_loopback_host(host: str) -> bool:
    """Whether listening on `host` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except (OSError, UnicodeError):
        return False
    return bool(addresses) and all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)


def check_exposure(host: str, *, authenticated: bool, insecure: bool, auth_option: str, share: bool = False) -> None:
    """Refuse to listen beyond loopback (or open a public share link) without authentication, unless the operator
    said --insecure-no-auth. `auth_option` names the flag that adds authentication (`--auth USER:PASSWORD`)."""
    if authenticated or insecure:
        return
    if share:
        where = "a public --share link"
    elif not is_loopback_host(host):
        where = f"--host {host}, which other machines can reach"
    else:
        return
    raise ExposureError(f"refusing to serve on {where} without authentication: anyone who reaches it could run "
                        f"the models on this machine; add {auth_option}, keep the default --host 127.0.0.1, "
                        "or pass --insecure-no-auth on a network you trust")
