"""Endpoint URL rules shared by every client: TLS everywhere, plain http only to loopback in dev mode."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(url: str, *, dev_mode: bool) -> str:
    """Returns the URL without a trailing slash, or raises ValueError saying what to change."""
    parts = urlsplit(url)
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    if parts.username or parts.password or parts.query:
        raise ValueError("must not carry credentials or a query string")
    if parts.scheme == "http":
        if not is_loopback_url(url):
            raise ValueError("plain http is only allowed to loopback addresses; use https")
        if not dev_mode:
            raise ValueError("plain http to loopback needs TIBRIDGE_DEV_MODE=true")
    return url.rstrip("/")
