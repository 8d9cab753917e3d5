"""Observable normalisation and validation: pure functions, no I/O.

Every function here either returns a canonical `Observable` or a `RejectionReason`; none raises on any text.
The canonical form re-normalises to itself, so re-reading an indicator always yields the same message id.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

import idna

from tibridge.common.contracts import HashAlgorithm, Observable, ObservableType, RejectionReason

Normalised = Observable | RejectionReason

_IP_KEYS = frozenset(
    {"ipv4-addr:value", "ipv6-addr:value", "network-traffic:src_ref.value", "network-traffic:dst_ref.value"}
)
_SIMPLE_KEYS: Mapping[str, ObservableType] = {
    "domain-name:value": ObservableType.DOMAIN,
    "url:value": ObservableType.URL,
    "email-addr:value": ObservableType.EMAIL,
}
_HASH_KEY_PREFIX = "file:hashes."
_HEX_DIGITS = frozenset(string.hexdigits.lower())
_DEFAULT_PORTS: Mapping[str, int] = {"http": 80, "https": 443, "ftp": 21}

# Defanging conventions undone before anything else; applied until nothing changes, so the result is a fixpoint.
_DEFANGED = re.compile(r"\[\.\]|\(\.\)|\[dot\]|\[:\]|\[@\]", re.IGNORECASE)
_REFANGED = {"[.]": ".", "(.)": ".", "[dot]": ".", "[:]": ":", "[@]": "@"}
_DEFANGED_SCHEME = re.compile(r"^hxxp(s?)(?=:)", re.IGNORECASE)
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MAX_DOMAIN_LENGTH = 253
_MAX_LOCAL_PART = 64


@dataclass(frozen=True)
class KeyKind:
    """What an ObservableKey names: an IP (v4 or v6, decided by the value), another type, or a hash."""

    observable_type: ObservableType | None  # None: an IP address of either version
    hash_algorithm: HashAlgorithm | None = None


def kind_of_key(key: str) -> KeyKind | None:
    """The kind an ObservableKey names, or None when the collector does not support it."""
    if key in _IP_KEYS:
        return KeyKind(None)
    if key in _SIMPLE_KEYS:
        return KeyKind(_SIMPLE_KEYS[key])
    if key.startswith(_HASH_KEY_PREFIX):
        algorithm = hash_algorithm_named(key.removeprefix(_HASH_KEY_PREFIX))
        return KeyKind(ObservableType.FILE_HASH, algorithm) if algorithm else None
    return None


def hash_algorithm_named(name: str) -> HashAlgorithm | None:
    """`MD5`, `'SHA-1'`, `SHA256`, … → the algorithm; quotes, dashes and case do not matter."""
    compact = "".join(char for char in name.lower() if char.isalnum())
    try:
        return HashAlgorithm(compact)
    except ValueError:
        return None


def refang(text: str) -> str:
    """Undoes `[.]`, `(.)`, `[dot]`, `[:]`, `[@]` and an `hxxp(s)` scheme, repeatedly until stable."""
    while True:
        refanged = _DEFANGED.sub(lambda match: _REFANGED[match.group().lower()], text)
        refanged = _DEFANGED_SCHEME.sub(lambda match: "http" + match.group(1).lower(), refanged)
        if refanged == text:
            return text
        text = refanged


def normalise(kind: KeyKind, raw: str, *, reject_non_global: bool) -> Normalised:
    """The canonical observable for a raw value of the given kind, or why it is refused."""
    value = refang(raw.strip())
    if not value:
        return RejectionReason.INVALID_VALUE
    if kind.observable_type is None:
        return _ip(value, reject_non_global)
    match kind.observable_type:
        case ObservableType.DOMAIN:
            host = canonical_domain(value)
            return Observable(type=ObservableType.DOMAIN, value=host) if host else RejectionReason.INVALID_VALUE
        case ObservableType.URL:
            return _url(value, reject_non_global)
        case ObservableType.EMAIL:
            return _email(value)
        case ObservableType.FILE_HASH if kind.hash_algorithm is not None:
            return _file_hash(value, kind.hash_algorithm)
        case ObservableType.IPV4 | ObservableType.IPV6:
            return _ip(value, reject_non_global)
    return RejectionReason.UNSUPPORTED_TYPE


def normalise_keyed(key: str, raw: str, *, reject_non_global: bool) -> Normalised:
    kind = kind_of_key(key)
    if kind is None:
        return RejectionReason.UNSUPPORTED_TYPE
    return normalise(kind, raw, reject_non_global=reject_non_global)


def canonical_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if "%" in value:  # a zone id names an interface on one machine: never a shareable indicator
        return None
    if ":" not in value and not value.replace(".", "").isdigit():
        return None  # neither form can parse; skipping the attempt keeps host names fast
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def canonical_domain(value: str) -> str | None:
    """Lower-case A-label form without the trailing dot, or None when it is not a valid host name."""
    host = value.removesuffix(".")
    if not host or len(host) > 4 * _MAX_DOMAIN_LENGTH:
        return None
    if host.isascii():
        # Plain LDH labels map to their lower-case selves under UTS 46; only A-labels and hyphens in
        # positions 3-4 need the idna package's checks (which cost ~50x more).
        lowered = host.lower()
        labels = lowered.split(".")
        if all(_LABEL.fullmatch(label) and label[2:4] != "--" for label in labels):
            return lowered if _is_domain(lowered, labels) else None
    try:
        encoded = idna.encode(host, uts46=True).decode("ascii")
    except (UnicodeError, ValueError):  # idna.IDNAError is a UnicodeError
        return None
    labels = encoded.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels) or not _is_domain(encoded, labels):
        return None
    return encoded


def _is_domain(host: str, labels: list[str]) -> bool:
    """A shareable domain: not too long, at least two labels, a top-level label that is not a number."""
    return len(host) <= _MAX_DOMAIN_LENGTH and len(labels) >= 2 and not labels[-1].isdigit()


def _ip(value: str, reject_non_global: bool) -> Normalised:
    address = canonical_ip(value)
    if address is None:
        return RejectionReason.INVALID_VALUE
    if reject_non_global and not address.is_global:
        return RejectionReason.NON_GLOBAL_IP
    observable_type = ObservableType.IPV4 if address.version == 4 else ObservableType.IPV6
    return Observable(type=observable_type, value=str(address))


def _file_hash(value: str, algorithm: HashAlgorithm) -> Normalised:
    digest = value.lower()
    if len(digest) != algorithm.hex_length or not set(digest) <= _HEX_DIGITS:
        return RejectionReason.INVALID_VALUE
    return Observable(type=ObservableType.FILE_HASH, value=digest, hash_algorithm=algorithm)


def _email(value: str) -> Normalised:
    local, at, domain = value.partition("@")
    if not at or not local or len(local) > _MAX_LOCAL_PART or "@" in domain or _has_space_or_control(local):
        return RejectionReason.INVALID_VALUE
    host = canonical_domain(domain)
    if host is None:
        return RejectionReason.INVALID_VALUE
    return Observable(type=ObservableType.EMAIL, value=f"{local}@{host}")


def _url(value: str, reject_non_global: bool) -> Normalised:
    if _has_space_or_control(value) or len(value) > 8192:
        return RejectionReason.INVALID_VALUE
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:  # a bad port or an unbalanced IPv6 bracket
        return RejectionReason.INVALID_VALUE
    scheme = parts.scheme.lower()
    if not _SCHEME.fullmatch(scheme):
        return RejectionReason.INVALID_VALUE
    host = _url_host(parts, reject_non_global)
    if isinstance(host, RejectionReason):
        return host
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (f"{userinfo}@" if userinfo else "") + host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc += f":{port}"
    canonical = f"{scheme}://{netloc}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
    return Observable(type=ObservableType.URL, value=canonical)


def _url_host(parts: SplitResult, reject_non_global: bool) -> str | RejectionReason:
    host = parts.hostname
    if not host:
        return RejectionReason.INVALID_VALUE
    address = canonical_ip(host)
    if address is not None:
        if reject_non_global and not address.is_global:
            return RejectionReason.NON_GLOBAL_IP
        return f"[{address}]" if address.version == 6 else str(address)
    if "[" in parts.netloc:  # brackets hold IPv6 literals only
        return RejectionReason.INVALID_VALUE
    domain = canonical_domain(host)
    return domain if domain else RejectionReason.INVALID_VALUE


def _has_space_or_control(text: str) -> bool:
    return any(char.isspace() or not char.isprintable() for char in text)


# --- STIX patterns -----------------------------------------------------------------------------------------

# One comparison `[<object>:<path> = '<value>']`; the value escapes `'` and `\` with a backslash.
_SINGLE_COMPARISON = re.compile(
    r"\s*\[\s*(?P<key>[A-Za-z0-9_-]+:[A-Za-z0-9_.'-]+)\s*=\s*'(?P<value>(?:[^'\\]|\\.)*)'\s*\]\s*", re.DOTALL
)
_PATTERN_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


@dataclass(frozen=True)
class PatternComparison:
    key: str
    value: str


def parse_pattern(pattern: str) -> PatternComparison | None:
    """The single equality comparison a STIX pattern consists of, or None for anything else."""
    match = _SINGLE_COMPARISON.fullmatch(pattern)
    if match is None:
        return None
    return PatternComparison(match.group("key"), _PATTERN_ESCAPE.sub(r"\1", match.group("value")))


def normalise_pattern(pattern: str, *, reject_non_global: bool) -> Normalised:
    comparison = parse_pattern(pattern)
    if comparison is None:
        return RejectionReason.UNPARSED_PATTERN
    return normalise_keyed(comparison.key, comparison.value, reject_non_global=reject_non_global)
