"""Seeded `ThreatIntelIndicators` rows, and what each indicator's observable really is.

The generator first makes the canonical value of every observable and then mangles it (defangs, case,
trailing dots, IDN Unicode forms...), so it knows the truth without normalising anything itself; the
expected outcome (`tibridge.sandbox.expected`) is computed from that truth.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import random
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import idna

from tibridge.common.contracts import HashAlgorithm, ObservableType, RejectionReason
from tibridge.common.sentinel import MDTI_SOURCE_SYSTEMS as MDTI_SOURCE_SYSTEMS

OTHER_SOURCE_SYSTEMS = ("Microsoft Sentinel", "AlienVault OTX", "abuse.ch URLhaus", "Recorded Future")


# `ObservableKey` is whatever the producer wrote left of the pattern's `=` (external-apis.md §1): Microsoft's
# spelling first, then spellings other producers use.
HASH_KEYS: Mapping[HashAlgorithm, tuple[str, ...]] = {
    HashAlgorithm.MD5: ("file:hashes.MD5", "file:hashes.'MD5'"),
    HashAlgorithm.SHA1: ("file:hashes.'SHA-1'", "file:hashes.'SHA1'", "file:hashes.SHA1"),
    HashAlgorithm.SHA256: ("file:hashes.'SHA-256'", "file:hashes.'SHA256'", "file:hashes.SHA256"),
    HashAlgorithm.SHA512: ("file:hashes.'SHA-512'", "file:hashes.'SHA512'", "file:hashes.SHA512"),
}
HASH_KEY_PREFIX = "file:hashes."
NETWORK_TRAFFIC_KEYS = ("network-traffic:src_ref.value", "network-traffic:dst_ref.value")
# The ObservableKeys a correct collector reads besides every `file:hashes.` key.
SUPPORTED_OBSERVABLE_KEYS = (
    "ipv4-addr:value",
    "ipv6-addr:value",
    *NETWORK_TRAFFIC_KEYS,
    "domain-name:value",
    "url:value",
    "email-addr:value",
)


def hash_algorithm_of_key(key: str) -> HashAlgorithm | None:
    """`file:hashes.'SHA-256'`, `file:hashes.SHA256`... → sha256; None for other keys and unknown algorithms."""
    if not key.startswith(HASH_KEY_PREFIX):
        return None
    name = key.removeprefix(HASH_KEY_PREFIX).strip("'").replace("-", "").lower()
    try:
        return HashAlgorithm(name)
    except ValueError:
        return None


def is_supported_key(key: str) -> bool:
    return key in SUPPORTED_OBSERVABLE_KEYS or hash_algorithm_of_key(key) is not None


UNSUPPORTED_OBSERVABLE_KEYS = (
    "mac-addr:value",
    "windows-registry-key:key",
    "file:name",
    "x509-certificate:serial_number",
)

TLP_MARKINGS: Mapping[str, str] = {
    "White": "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9",
    "Green": "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da",
    "Amber": "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82",
    "Red": "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed",
}

_TLP_NAMES = tuple(TLP_MARKINGS)

REPUBLISH_INTERVAL = timedelta(days=7)


class ColumnType(StrEnum):
    STRING = "string"
    INT = "int"
    LONG = "long"
    REAL = "real"
    BOOL = "bool"
    DATETIME = "datetime"
    DYNAMIC = "dynamic"


@dataclass(frozen=True, slots=True)
class IndicatorRow:
    """One row of ThreatIntelIndicators; strings are never null (Log Analytics answers "" for empty)."""

    time_generated: datetime
    id: str
    pattern: str
    observable_key: str
    observable_value: str
    confidence: int
    is_active: bool
    is_deleted: bool
    revoked: bool
    valid_from: datetime | None
    valid_until: datetime | None
    created: datetime | None
    modified: datetime | None
    source: str
    source_system: str
    last_update_method: str
    tags: tuple[str, ...]
    data: Mapping[str, Any]
    additional_fields: Mapping[str, Any]


# Column name, type and IndicatorRow attribute, in the table's column order.
COLUMNS: tuple[tuple[str, ColumnType, str], ...] = (
    ("TimeGenerated", ColumnType.DATETIME, "time_generated"),
    ("Id", ColumnType.STRING, "id"),
    ("Pattern", ColumnType.STRING, "pattern"),
    ("ObservableKey", ColumnType.STRING, "observable_key"),
    ("ObservableValue", ColumnType.STRING, "observable_value"),
    ("Confidence", ColumnType.INT, "confidence"),
    ("IsActive", ColumnType.BOOL, "is_active"),
    ("IsDeleted", ColumnType.BOOL, "is_deleted"),
    ("Revoked", ColumnType.BOOL, "revoked"),
    ("ValidFrom", ColumnType.DATETIME, "valid_from"),
    ("ValidUntil", ColumnType.DATETIME, "valid_until"),
    ("Created", ColumnType.DATETIME, "created"),
    ("Modified", ColumnType.DATETIME, "modified"),
    ("Source", ColumnType.STRING, "source"),
    ("SourceSystem", ColumnType.STRING, "source_system"),
    ("LastUpdateMethod", ColumnType.STRING, "last_update_method"),
    ("Tags", ColumnType.DYNAMIC, "tags"),
    ("Data", ColumnType.DYNAMIC, "data"),
    ("AdditionalFields", ColumnType.DYNAMIC, "additional_fields"),
)


@dataclass(frozen=True, slots=True)
class ObservableTruth:
    """What an indicator's observable really is, known because the generator made it.

    `rejection` is set when a correct collector must refuse the row; `observable_type` and
    `canonical_value` are set whenever a canonical value exists (also for non-global IPs).
    """

    observable_type: ObservableType | None
    canonical_value: str | None
    hash_algorithm: HashAlgorithm | None = None
    rejection: RejectionReason | None = None


@dataclass(frozen=True)
class Dataset:
    rows: tuple[IndicatorRow, ...]  # sorted by time_generated
    anchor: datetime
    # None when the rows were given rather than generated: nobody knows their truth then.
    truths: Mapping[str, ObservableTruth] | None = None
    seed: int | None = None
    newest: Mapping[str, IndicatorRow] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        newest: dict[str, IndicatorRow] = {}
        for row in self.rows:
            newest[row.id] = row
        object.__setattr__(self, "newest", newest)


def format_datetime(value: datetime) -> str:
    """Kusto's rendering: UTC, seven fractional digits, 'Z'."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "0Z"


def _optional_datetime(value: datetime | None) -> str | None:
    return format_datetime(value) if value is not None else None


def _json_data(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def row_to_columns(row: IndicatorRow, dynamic: Callable[[Any], Any] = _json_data) -> dict[str, Any]:
    """Column name → JSON-ready value: datetimes as ISO strings, dynamic values through `dynamic`
    (JSON data by default; the Log Analytics stand-in passes an encoder, as the real service sends
    dynamic columns as JSON-encoded strings)."""
    converters: dict[ColumnType, Callable[[Any], Any]] = {
        ColumnType.DATETIME: _optional_datetime,
        ColumnType.DYNAMIC: dynamic,
    }
    return {
        name: converters[kind](getattr(row, attribute)) if kind in converters else getattr(row, attribute)
        for name, kind, attribute in COLUMNS
    }


class RowsFileError(ValueError):
    pass


def row_from_columns(columns: Mapping[str, Any]) -> IndicatorRow:
    """The inverse of `row_to_columns`; dynamic columns may also be given as JSON-encoded strings."""
    unknown = set(columns) - {name for name, _, _ in COLUMNS}
    if unknown:
        raise RowsFileError(f"unknown column(s) {sorted(unknown)}; use the ThreatIntelIndicators column names")
    if not columns.get("TimeGenerated") or not columns.get("Id"):
        raise RowsFileError("every row needs TimeGenerated and Id")
    values: dict[str, Any] = {}
    for name, column_type, attribute in COLUMNS:
        values[attribute] = _column_value(name, column_type, columns.get(name))
    values["tags"] = tuple(str(tag) for tag in values["tags"] or ())
    values["data"] = values["data"] or {}
    values["additional_fields"] = values["additional_fields"] or {}
    return IndicatorRow(**values)


def _column_value(name: str, column_type: ColumnType, raw: Any) -> Any:
    try:
        match column_type:
            case ColumnType.DATETIME:
                return None if raw in (None, "") else _parse_datetime(str(raw))
            case ColumnType.STRING:
                return "" if raw is None else str(raw)
            case ColumnType.INT:
                return 0 if raw is None else int(raw)
            case ColumnType.BOOL:
                return bool(raw)
            case ColumnType.DYNAMIC:
                return json.loads(raw) if isinstance(raw, str) else raw
            case _:
                raise AssertionError(column_type)
    except (ValueError, TypeError) as error:
        raise RowsFileError(f"column {name} holds {raw!r}, which is not a valid {column_type}") from error


def _parse_datetime(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def load_rows(path: Path) -> Dataset:
    """Serves exactly the rows of a JSONL file (one object per line, keys = column names)."""
    rows: list[IndicatorRow] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rows.append(row_from_columns(json.loads(line)))
            except (json.JSONDecodeError, RowsFileError) as error:
                raise RowsFileError(f"{path}:{number}: {error}") from None
    rows.sort(key=lambda row: row.time_generated)
    anchor = rows[-1].time_generated if rows else datetime.now(UTC)
    return Dataset(rows=tuple(rows), anchor=anchor)


def dump_rows(rows: Iterable[IndicatorRow], path: Path) -> None:
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row_to_columns(row), ensure_ascii=False) + "\n")


# --- generation ---------------------------------------------------------------------------------

_WORDS = (
    "alpha", "amber", "apex", "atlas", "beacon", "birch", "cobalt", "crane", "delta", "ember", "falcon",
    "garnet", "harbor", "indigo", "juniper", "kestrel", "lumen", "maple", "nimbus", "onyx", "pepper",
    "quartz", "raven", "sable", "tango", "umber", "vertex", "willow", "xenon", "yonder", "zephyr",
    "cloud", "cdn", "mail", "login", "secure", "update", "portal", "files", "sync", "api", "shop",
)  # fmt: skip
_IDN_LABELS = ("bücher", "münchen", "café", "пример", "例え", "δοκιμή", "naïve", "façade", "zürich")
_TLDS = ("com", "net", "org", "info", "io", "biz", "ru", "cn", "xyz", "top", "online", "de")
_URL_PATHS = ("/", "/login.php", "/wp-admin/x.php", "/dl/payload.bin", "/a/b/c", "/index.html", "/gate.php")
_INDICATOR_TYPES = ("malicious-activity", "anomalous-activity", "attribution", "compromised", "benign")
_THREAT_TAGS = ("Phishing", "C2", "Botnet", "Ransomware", "Scanner", "Malware", "APT", "Spam")

_NON_GLOBAL_IPV4 = ("10.{a}.{b}.{c}", "192.168.{b}.{c}", "172.16.{b}.{c}", "127.0.0.{c}", "169.254.{b}.{c}")
_NON_GLOBAL_IPV6 = ("::1", "fe80::{x}", "fd00::{x}", "fc00:{x}::1")
_GARBAGE: Mapping[ObservableType, tuple[str, ...]] = {
    ObservableType.IPV4: ("256.1.1.1", "1.2.3", "1.2.3.4.5", "not-an-ip", "12.34.56.789"),
    ObservableType.IPV6: ("2001:db8::g1", "::1::2", "12345::1", "fe80:::1"),
    ObservableType.DOMAIN: ("not a domain", "exa mple.com", "a..b.com", "-start.example.com", "bad!.example.com"),
    ObservableType.URL: ("not a url", "http://", "://no-scheme.example.com/x", "http:// spaced.example.com/"),
    ObservableType.EMAIL: ("no-at-sign.example.com", "@example.com", "user@", "two@@example.com"),
}


@dataclass(frozen=True, slots=True)
class _Observable:
    key: str
    value: str  # as it appears in the row (maybe mangled)
    truth: ObservableTruth


@dataclass(frozen=True, slots=True)
class _Lifecycle:
    revoked: bool  # only the newest copy carries it
    deleted: bool
    inactive: bool
    expired: bool
    no_expiry: bool


class _Generator:
    def __init__(self, seed: int, anchor: datetime, days: int, repeat_ratio: float) -> None:
        self.rng = random.Random(seed)
        self.anchor = anchor.astimezone(UTC)
        self.days = days
        self.repeat_ratio = repeat_ratio
        self.used_values: set[str] = set()
        self.repeatable: list[tuple[_Observable, _Lifecycle]] = []

    def _below(self, bound: int) -> int:
        """A uniform int in [0, bound): cheaper than randrange, and plenty for made-up data."""
        return int(self.rng.random() * bound)

    def indicator(self) -> tuple[str, list[IndicatorRow], ObservableTruth]:
        rng = self.rng
        stix_id = f"indicator--{uuid.UUID(int=rng.getrandbits(128), version=4)}"
        source_system = rng.choice(MDTI_SOURCE_SYSTEMS)
        pattern_only = False
        if self.repeatable and rng.random() < self.repeat_ratio:
            original, lifecycle = rng.choice(self.repeatable)
            observable = self._remangle(original)
        else:
            lifecycle = self._lifecycle()
            draw = rng.random()
            if draw < 0.12:
                source_system = rng.choice(OTHER_SOURCE_SYSTEMS)
                observable = self._valid()
            elif draw < 0.15:
                observable = self._unsupported_key()
            elif draw < 0.20:
                observable, pattern_only = self._pattern_only(), True
            elif draw < 0.24:
                observable = self._garbage()
            elif draw < 0.27:
                observable = self._non_global_ip()
            else:
                observable = self._valid()
                if source_system in MDTI_SOURCE_SYSTEMS:
                    self.repeatable.append((observable, lifecycle))
        source = source_of(source_system)
        indicator_id = table_id(source, stix_id)
        return (
            indicator_id,
            self._rows(indicator_id, stix_id, source, source_system, observable, lifecycle, pattern_only),
            observable.truth,
        )

    # observables -------------------------------------------------------------------------------

    def _valid(self) -> _Observable:
        draw = self.rng.random()
        while True:
            if draw < 0.35:
                observable = self._ipv4()
            elif draw < 0.43:
                observable = self._ipv6()
            elif draw < 0.70:
                observable = self._domain()
            elif draw < 0.82:
                observable = self._url()
            elif draw < 0.94:
                observable = self._file_hash()
            else:
                observable = self._email()
            canonical = observable.truth.canonical_value
            if canonical not in self.used_values:
                self.used_values.add(str(canonical))
                return observable

    def _ipv4(self) -> _Observable:
        rng = self.rng
        while True:
            address = ipaddress.IPv4Address(rng.getrandbits(32))
            if address.is_global:
                break
        canonical = str(address)
        key = "ipv4-addr:value" if rng.random() < 0.8 else rng.choice(NETWORK_TRAFFIC_KEYS)
        value = canonical
        if rng.random() < 0.25:
            value = rng.choice((canonical.replace(".", "[.]"), canonical.replace(".", "(.)", 1), f" {canonical} "))
        return _Observable(key, value, ObservableTruth(ObservableType.IPV4, canonical))

    def _ipv6(self) -> _Observable:
        rng = self.rng
        while True:
            address = ipaddress.IPv6Address((0x2 << 124) | rng.getrandbits(64) << 48 | rng.getrandbits(16))
            if address.is_global:
                break
        canonical = str(address)
        key = "ipv6-addr:value" if rng.random() < 0.8 else rng.choice(NETWORK_TRAFFIC_KEYS)
        value = canonical
        if rng.random() < 0.3:
            value = rng.choice((address.exploded, canonical.upper(), address.exploded.upper()))
        return _Observable(key, value, ObservableTruth(ObservableType.IPV6, canonical))

    def _hostname(self) -> tuple[str, str]:
        """A host name as a feed might spell it (maybe Unicode IDN), and its canonical A-label form."""
        rng = self.rng
        labels = [rng.choice(_WORDS) + str(self._below(1000)) for _ in range(rng.choice((1, 1, 2)))]
        if rng.random() < 0.08:
            labels[-1] = f"{rng.choice(_IDN_LABELS)}{self._below(100)}"
        display = ".".join([*labels, rng.choice(_TLDS)])
        canonical = idna.encode(display, uts46=True).decode("ascii") if not display.isascii() else display
        return display, canonical

    def _domain(self) -> _Observable:
        rng = self.rng
        display, canonical = self._hostname()
        value = display
        if rng.random() < 0.3:
            value = self._mangle_host(display)
        elif rng.random() < 0.1:
            value = canonical  # already in A-label form
        return _Observable("domain-name:value", value, ObservableTruth(ObservableType.DOMAIN, canonical))

    def _mangle_host(self, host: str) -> str:
        choice = self._below(5)
        if choice == 0:
            return host.upper()
        if choice == 1:
            return host + "."
        if choice == 2:
            return host.replace(".", "[.]")
        if choice == 3:
            return host.replace(".", "(.)", 1)
        return host.replace(".", "[dot]")

    def _url(self) -> _Observable:
        rng = self.rng
        display_host, canonical_host = self._hostname()
        scheme = rng.choice(("http", "https"))
        path = rng.choice(_URL_PATHS)
        query = rng.choice(("", "", "?id=42&Ref=AbC", "?q=x%20y"))
        canonical = f"{scheme}://{canonical_host}{path}{query}"
        value = f"{scheme}://{display_host}{path}{query}"
        if rng.random() < 0.4:
            choice = self._below(6)
            if choice == 0:
                value = f"{scheme.replace('http', 'hxxp')}://{display_host.replace('.', '[.]')}{path}{query}"
            elif choice == 1:
                value = f"{scheme.upper()}://{display_host.upper()}{path}{query}"
            elif choice == 2:
                port = 80 if scheme == "http" else 443
                value = f"{scheme}://{display_host}:{port}{path}{query}"
            elif choice == 3 and path == "/" and not query:
                value = f"{scheme}://{display_host}"
            elif choice == 4:
                value = f"{scheme}://{display_host}{path}{query}#section-{self._below(9)}"
            else:
                value = f"{scheme}[:]//{display_host}{path}{query}"
        return _Observable("url:value", value, ObservableTruth(ObservableType.URL, canonical))

    def _file_hash(self) -> _Observable:
        rng = self.rng
        algorithm = rng.choice(tuple(HashAlgorithm))
        canonical = f"{rng.getrandbits(algorithm.hex_length * 4):0{algorithm.hex_length}x}"
        value = canonical.upper() if rng.random() < 0.2 else canonical
        truth = ObservableTruth(ObservableType.FILE_HASH, canonical, hash_algorithm=algorithm)
        spellings = HASH_KEYS[algorithm]
        key = spellings[0] if rng.random() < 0.7 else rng.choice(spellings[1:])
        return _Observable(key, value, truth)

    def _email(self) -> _Observable:
        rng = self.rng
        local = f"{rng.choice(('Admin', 'billing', 'no.reply', 'J.Smith', 'support'))}{self._below(100)}"
        display_host, canonical_host = self._hostname()
        canonical = f"{local}@{canonical_host}"
        value = f"{local}@{display_host}"
        if rng.random() < 0.3:
            value = rng.choice((f"{local}[@]{display_host.replace('.', '[.]')}", f"{local}@{display_host.upper()}"))
        return _Observable("email-addr:value", value, ObservableTruth(ObservableType.EMAIL, canonical))

    def _remangle(self, original: _Observable) -> _Observable:
        """Another Id with the same canonical observable, spelled its own way."""
        truth = original.truth
        value = str(truth.canonical_value)
        if truth.observable_type is ObservableType.DOMAIN and self.rng.random() < 0.5:
            value = self._mangle_host(value)
        elif truth.observable_type is ObservableType.FILE_HASH and self.rng.random() < 0.5:
            value = value.upper()
        elif truth.observable_type is ObservableType.IPV4 and self.rng.random() < 0.5:
            value = value.replace(".", "[.]")
        return _Observable(original.key, value, truth)

    def _unsupported_key(self) -> _Observable:
        rng = self.rng
        key = rng.choice(UNSUPPORTED_OBSERVABLE_KEYS)
        value = (
            ":".join(f"{self._below(256):02x}" for _ in range(6))
            if key == "mac-addr:value"
            else f"x{rng.getrandbits(40):x}"
        )
        return _Observable(key, value, ObservableTruth(None, None))

    def _pattern_only(self) -> _Observable:
        """Only `Pattern` is filled: the value is in `_Observable.value` as the pattern text itself."""
        rng = self.rng
        draw = rng.random()
        if draw < 0.4:
            observable = self._valid()
            pattern = f"[{observable.key} = '{observable.truth.canonical_value}']"
            return _Observable("", pattern, observable.truth)
        if draw < 0.7:
            first, second = self._ipv4(), self._domain()
            pattern = (
                f"[{first.key} = '{first.value.strip()}'] AND [domain-name:value = '{second.truth.canonical_value}']"
            )
            return _Observable("", pattern, ObservableTruth(None, None, rejection=RejectionReason.UNPARSED_PATTERN))
        unsupported = self._unsupported_key()
        pattern = f"[{unsupported.key} = '{unsupported.value}']"
        return _Observable("", pattern, ObservableTruth(None, None, rejection=RejectionReason.UNSUPPORTED_TYPE))

    def _garbage(self) -> _Observable:
        rng = self.rng
        if rng.random() < 0.2:
            algorithm = rng.choice(tuple(HashAlgorithm))
            length = algorithm.hex_length
            value = rng.choice((f"{rng.getrandbits(4 * length):0{length}x}"[:-1], "z" * length))
            return _Observable(
                HASH_KEYS[algorithm][0],
                value,
                ObservableTruth(ObservableType.FILE_HASH, None, algorithm, RejectionReason.INVALID_VALUE),
            )
        observable_type = rng.choice(tuple(_GARBAGE))
        key = {
            ObservableType.IPV4: "ipv4-addr:value",
            ObservableType.IPV6: "ipv6-addr:value",
            ObservableType.DOMAIN: "domain-name:value",
            ObservableType.URL: "url:value",
            ObservableType.EMAIL: "email-addr:value",
        }[observable_type]
        value = rng.choice(_GARBAGE[observable_type])
        return _Observable(key, value, ObservableTruth(observable_type, None, rejection=RejectionReason.INVALID_VALUE))

    def _non_global_ip(self) -> _Observable:
        rng = self.rng
        if rng.random() < 0.7:
            template = rng.choice(_NON_GLOBAL_IPV4)
            text = template.format(a=self._below(256), b=self._below(256), c=(1 + self._below(255 - 1)))
            observable_type, key = ObservableType.IPV4, "ipv4-addr:value"
        else:
            text = rng.choice(_NON_GLOBAL_IPV6).format(x=f"{(1 + self._below(0xFFFF - 1)):x}")
            observable_type, key = ObservableType.IPV6, "ipv6-addr:value"
        canonical = str(ipaddress.ip_address(text))
        return _Observable(
            key, text, ObservableTruth(observable_type, canonical, rejection=RejectionReason.NON_GLOBAL_IP)
        )

    # rows --------------------------------------------------------------------------------------

    def _lifecycle(self) -> _Lifecycle:
        rng = self.rng
        return _Lifecycle(
            revoked=rng.random() < 0.08,
            deleted=rng.random() < 0.03,
            inactive=rng.random() < 0.05,
            expired=rng.random() < 0.07,
            no_expiry=rng.random() < 0.03,
        )

    def _rows(
        self,
        indicator_id: str,
        stix_id: str,
        source: str,
        source_system: str,
        observable: _Observable,
        lifecycle: _Lifecycle,
        pattern_only: bool,
    ) -> list[IndicatorRow]:
        rng, below = self.rng, self._below
        window_us = self.days * 86_400_000_000
        first_seen = self.anchor - timedelta(microseconds=window_us - below(window_us))
        times = [first_seen]
        while True:
            following = times[-1] + REPUBLISH_INTERVAL + timedelta(seconds=below(21_600) - 10_800)
            if following >= self.anchor:
                break
            times.append(following)
        created = first_seen - timedelta(days=below(30), seconds=below(86_400))
        valid_until: datetime | None
        if lifecycle.expired:
            expiry = self.anchor - timedelta(days=30 + below(60))
            created = min(created, expiry - timedelta(days=1 + below(89)))
            valid_until = expiry
        else:
            valid_until = None if lifecycle.no_expiry else self.anchor + timedelta(days=60 + below(300))
        valid_from = created + timedelta(minutes=below(60))
        confidence = below(101) if rng.random() < 0.5 else 50 + below(51)
        tlp = rng.choice(_TLP_NAMES)
        tags = tuple(sorted(rng.sample(_THREAT_TAGS, below(3))))
        description = f"{tags[0] if tags else 'Threat'} infrastructure observed by MDTI"
        mdti = source_system in MDTI_SOURCE_SYSTEMS
        if pattern_only:
            pattern, key, value = observable.value, "", ""
        else:
            escaped = observable.value.replace("\\", "\\\\").replace("'", "\\'")
            pattern, key, value = f"[{observable.key} = '{escaped}']", observable.key, observable.value
        stix: dict[str, Any] = {
            "id": stix_id,
            "type": "indicator",
            "spec_version": "2.1",
            "pattern": pattern,
            "pattern_type": "stix",
            "name": f"{description} ({stix_id[-8:]})",
            "description": description,
            "indicator_types": [rng.choice(_INDICATOR_TYPES)],
            "labels": list(tags),
            "object_marking_refs": [TLP_MARKINGS[tlp]],
            "valid_from": format_datetime(valid_from),
            "created": format_datetime(created),
            "confidence": confidence,
        }
        if valid_until is not None:
            stix["valid_until"] = format_datetime(valid_until)
        additional_fields = {"TLPLevel": tlp}
        update_method = "MicrosoftDefenderThreatIntelligence" if mdti else "TAXII"
        rows = []
        for copy, time_generated in enumerate(times):
            modified = time_generated - timedelta(minutes=1 + below(119))
            revoked = lifecycle.revoked and copy == len(times) - 1  # only the newest copy flips
            rows.append(
                IndicatorRow(
                    time_generated=time_generated,
                    id=indicator_id,
                    pattern=pattern,
                    observable_key=key,
                    observable_value=value,
                    confidence=confidence,
                    is_active=not lifecycle.inactive,
                    is_deleted=lifecycle.deleted,
                    revoked=revoked,
                    valid_from=valid_from,
                    valid_until=valid_until,
                    created=created,
                    modified=modified,
                    source=source,
                    source_system=source_system,
                    last_update_method=update_method,
                    tags=tags,
                    data={**stix, "modified": format_datetime(modified), "revoked": revoked},
                    additional_fields=additional_fields,
                )
            )
        return rows


def source_of(source_system: str) -> str:
    return source_system if source_system in MDTI_SOURCE_SYSTEMS else f"{source_system} feed"


def table_id(source: str, stix_id: str) -> str:
    """The table's `Id`: `<base64 of the source>---indicator--<uuid>` (external-apis.md §1)."""
    return f"{base64.b64encode(source.encode()).decode()}---{stix_id}"


def generate(indicators: int, seed: int, anchor: datetime, days: int = 14, repeat_ratio: float = 0.3) -> Dataset:
    """`indicators` distinct Ids, each with its weekly re-published copies, all in [anchor - days, anchor)."""
    if indicators < 0 or days < 1 or not 0 <= repeat_ratio < 1:
        raise ValueError("indicators must be ≥ 0, days ≥ 1 and repeat_ratio in [0, 1)")
    if anchor.tzinfo is None:
        raise ValueError("anchor must be timezone-aware")
    generator = _Generator(seed, anchor, days, repeat_ratio)
    rows: list[IndicatorRow] = []
    truths: dict[str, ObservableTruth] = {}
    for _ in range(indicators):
        indicator_id, indicator_rows, truth = generator.indicator()
        rows.extend(indicator_rows)
        truths[indicator_id] = truth
    rows.sort(key=lambda row: row.time_generated)
    return Dataset(rows=tuple(rows), anchor=anchor.astimezone(UTC), truths=truths, seed=seed)
