"""Observable normalisation and validation: pure functions, no I/O.

Every function here either returns a canonical `Observable` or a `RejectionReason`; none raises on any text.
The canonical form re-normalises to itself, so re-reading an indicator always yields the same message id.

The work on a value is bounded before it starts: a raw value longer than its kind can be (the standard's
length of the canonical form, times the most a defanged spelling adds) is refused without being looked at,
and every step after that is linear in the value's length (one regular-expression pass without backtracking
runs, one split, one encode).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, quote, urlsplit

import idna

from tibridge.collector.kql import HASH_KEY_PREFIX
from tibridge.common.contracts import HashAlgorithm, Observable, ObservableType, RejectionReason

Normalised = Observable | RejectionReason

# The longest canonical value of each kind.
MAX_DOMAIN_LENGTH = 253  # RFC 1035 §2.3.4 / RFC 2181 §11: 255 octets on the wire, 253 characters as text
MAX_LABEL_LENGTH = 63
MAX_EMAIL_LENGTH = 254  # RFC 5321 §4.5.3.1.3: a 256-octet path, less its angle brackets
MAX_LOCAL_PART_LENGTH = 64  # RFC 5321 §4.5.3.1.1
MAX_URL_LENGTH = 4096  # no standard limit; twice what browsers and sitemaps (2,048) interoperate on
MAX_IP_LENGTH = 45  # an IPv6 address with an embedded IPv4 address, fully written out
MAX_KEY_LENGTH = 128  # an ObservableKey: `network-traffic:src_ref.value` is 29 characters
# Defanging lengthens a value at most threefold (`.` → `[.]`; `[dot]` only between labels of one character).
_DEFANG_ALLOWANCE = 3
_MAX_RAW_LENGTH: Mapping[ObservableType | None, int] = {
    None: _DEFANG_ALLOWANCE * MAX_IP_LENGTH,  # an IP address of either version
    ObservableType.IPV4: _DEFANG_ALLOWANCE * MAX_IP_LENGTH,
    ObservableType.IPV6: _DEFANG_ALLOWANCE * MAX_IP_LENGTH,
    ObservableType.DOMAIN: _DEFANG_ALLOWANCE * MAX_DOMAIN_LENGTH,
    ObservableType.EMAIL: _DEFANG_ALLOWANCE * MAX_EMAIL_LENGTH,
    ObservableType.URL: _DEFANG_ALLOWANCE * MAX_URL_LENGTH,
    ObservableType.FILE_HASH: 2 * max(algorithm.hex_length for algorithm in HashAlgorithm),
}
# A one-comparison STIX pattern around the longest value, with every character of it escaped.
MAX_PATTERN_LENGTH = 2 * _MAX_RAW_LENGTH[ObservableType.URL] + MAX_KEY_LENGTH + 16

_IP_KEYS = frozenset(
    {"ipv4-addr:value", "ipv6-addr:value", "network-traffic:src_ref.value", "network-traffic:dst_ref.value"}
)
_SIMPLE_KEYS: Mapping[str, ObservableType] = {
    "domain-name:value": ObservableType.DOMAIN,
    "url:value": ObservableType.URL,
    "email-addr:value": ObservableType.EMAIL,
}
_HEX_DIGITS = frozenset(string.hexdigits.lower())
_DEFAULT_PORTS: Mapping[str, int] = {"http": 80, "https": 443, "ftp": 21}

# Defanging undone in one pass: `[.]`, `(.)`, `[dot]`, `[:]`, `[@]`, nested (`[[.]]`) or not. A run of opening
# brackets is consumed possessively by one alternative or the other, so the scan never revisits it: linear.
_DEFANGED = re.compile(r"[\[(]++(\.|dot|:|@)[\])]++|[\[(]++", re.IGNORECASE)
_DEFANGED_SCHEME = re.compile(r"^hxxp(s?)(?=:)", re.IGNORECASE)
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# RFC 5322 §3.2.3 dot-atom: the address grammar ThreatStream's (Django's) email validator accepts, without
# the quoted-string local parts no indicator feed uses.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
# RFC 3986 §2.3 and §3: what each URL component may hold as it is; anything else is percent-encoded.
_UNRESERVED_AND_SUB_DELIMS = string.ascii_letters + string.digits + "-._~" + "!$&'()*+,;="
_USERINFO_SAFE = _UNRESERVED_AND_SUB_DELIMS + ":"
_PATH_SAFE = _UNRESERVED_AND_SUB_DELIMS + ":@/"
_QUERY_SAFE = _PATH_SAFE + "?"
_NEEDS_ENCODING: Mapping[str, re.Pattern[str]] = {
    safe: re.compile(r"%(?![0-9A-Fa-f]{2})|[^" + re.escape(safe) + "%]")
    for safe in (_USERINFO_SAFE, _PATH_SAFE, _QUERY_SAFE)
}


@dataclass(frozen=True)
class KeyKind:
    """What an ObservableKey names: an IP (v4 or v6, decided by the value), another type, or a hash."""

    observable_type: ObservableType | None  # None: an IP address of either version
    hash_algorithm: HashAlgorithm | None = None


def kind_of_key(key: str) -> KeyKind | None:
    """The kind an ObservableKey names, or None when the collector does not support it.

    Every `file:hashes.` key is a hash key whatever its spelling (`'SHA-256'`, `SHA256`, `'sha256'`); the
    algorithm it names decides, and one the collector does not know is unsupported.
    """
    known = _KNOWN_KEYS.get(key)
    if known is not None:
        return known
    if len(key) > MAX_KEY_LENGTH:
        return None
    if key[: len(HASH_KEY_PREFIX)].lower() == HASH_KEY_PREFIX:
        return _hash_key_kind(key)
    return None


# Every row names one of a few keys: their kinds made once.
_KNOWN_KEYS: Mapping[str, KeyKind] = {
    **{key: KeyKind(None) for key in _IP_KEYS},
    **{key: KeyKind(observable_type) for key, observable_type in _SIMPLE_KEYS.items()},
}


@functools.lru_cache(maxsize=64)  # the spellings of four algorithms; a hostile key costs a miss, never memory
def _hash_key_kind(key: str) -> KeyKind | None:
    algorithm = hash_algorithm_named(key[len(HASH_KEY_PREFIX) :])
    return KeyKind(ObservableType.FILE_HASH, algorithm) if algorithm else None


def hash_algorithm_named(name: str) -> HashAlgorithm | None:
    """`MD5`, `'SHA-1'`, `SHA256`, `'SHA-512'` … → the algorithm; quotes, dashes and case do not matter."""
    if len(name) > MAX_KEY_LENGTH:
        return None
    compact = "".join(char for char in name.lower() if char.isalnum())
    try:
        return HashAlgorithm(compact)
    except ValueError:
        return None


def refang(text: str) -> str:
    """Undoes `[.]`, `(.)`, `[dot]`, `[:]`, `[@]` (also nested, `[[.]]`) and an `hxxp(s)` scheme, in one pass.

    What it returns holds none of them any more, so refanging it again changes nothing.
    """
    # Nearly every value is not defanged at all: two scans in C decide that.
    refanged = _DEFANGED.sub(_undefang, text) if "[" in text or "(" in text else text
    if refanged[:4].lower() != "hxxp":
        return refanged
    return _DEFANGED_SCHEME.sub(lambda match: "http" + match.group(1).lower(), refanged)


def _undefang(match: re.Match[str]) -> str:
    inner = match.group(1)
    if inner is None:  # a run of opening brackets around nothing defanged: kept as it is
        return match.group()
    return "." if inner.lower() == "dot" else inner


def normalise(kind: KeyKind, raw: str, *, reject_non_global: bool) -> Normalised:
    """The canonical observable for a raw value of the given kind, or why it is refused."""
    if len(raw) > _MAX_RAW_LENGTH[kind.observable_type]:
        return RejectionReason.INVALID_VALUE
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
    if len(value) > MAX_IP_LENGTH or "%" in value:  # a zone id names an interface on one machine only
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
    # A U-label is never longer than its A-label, so a host past the limit here is past it in every form.
    if not host or len(host) > MAX_DOMAIN_LENGTH:
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
    return len(host) <= MAX_DOMAIN_LENGTH and len(labels) >= 2 and not labels[-1].isdigit()


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
    """`local@domain`: a dot-atom local part of at most 64 characters and a valid domain (its A-label form)."""
    local, _, domain = value.partition("@")
    if len(local) > MAX_LOCAL_PART_LENGTH or not local.isascii() or not _DOT_ATOM.fullmatch(local):
        return RejectionReason.INVALID_VALUE
    host = canonical_domain(domain)
    if host is None or len(local) + 1 + len(host) > MAX_EMAIL_LENGTH:
        return RejectionReason.INVALID_VALUE
    return Observable(type=ObservableType.EMAIL, value=f"{local}@{host}")


def _url(value: str, reject_non_global: bool) -> Normalised:
    """`scheme://[userinfo@]host[:port]/path[?query]` with a valid host; the fragment is dropped, and every
    character a component may not hold as it is (RFC 3986) is percent-encoded."""
    if _has_space_or_control(value):
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
    netloc = (f"{_encoded(userinfo, _USERINFO_SAFE)}@" if userinfo else "") + host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc += f":{port}"
    path = _encoded(parts.path, _PATH_SAFE) or "/"
    query = _encoded(parts.query, _QUERY_SAFE)
    canonical = f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")
    if len(canonical) > MAX_URL_LENGTH:
        return RejectionReason.INVALID_VALUE
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


def _encoded(component: str, safe: str) -> str:
    """`component` with every character outside `safe` (and every `%` that starts no escape) percent-encoded
    as UTF-8; existing escapes stay as they are, so encoding twice changes nothing."""
    return _NEEDS_ENCODING[safe].sub(lambda match: quote(match.group(), safe=""), component)


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
    """The single equality comparison a STIX pattern consists of, or None for anything else (or anything
    longer than a pattern around the longest observable can be)."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        return None
    match = _SINGLE_COMPARISON.fullmatch(pattern)
    if match is None:
        return None
    return PatternComparison(match.group("key"), _PATTERN_ESCAPE.sub(r"\1", match.group("value")))


def normalise_pattern(pattern: str, *, reject_non_global: bool) -> Normalised:
    comparison = parse_pattern(pattern)
    if comparison is None:
        return RejectionReason.UNPARSED_PATTERN
    return normalise_keyed(comparison.key, comparison.value, reject_non_global=reject_non_global)
