"""ThreatStream's vocabularies as the sandbox enforces them (external-apis.md §3).

The itype list is the one Anomali's maintained consumers map (Elastic's ThreatStream integration lists every
itype with the observable type it carries), restricted to the six observable kinds the sandbox serves. Itypes
of other kinds (user agents, mutexes, registry keys, ssdeep, e-mail subjects...) are real but not modelled:
the sandbox treats them like unknown itypes.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class IntelKind(StrEnum):
    """An observable's `type` in ThreatStream; every hash kind is `md5` with a `subtype`."""

    IP = "ip"
    IPV6 = "ipv6"
    DOMAIN = "domain"
    URL = "url"
    HASH = "md5"
    EMAIL = "email"


class HashSubtype(StrEnum):
    MD5 = "MD5"
    SHA1 = "SHA1"
    SHA256 = "SHA256"
    SHA512 = "SHA512"


HASH_SUBTYPE_BY_LENGTH: Mapping[int, HashSubtype] = {
    32: HashSubtype.MD5,
    40: HashSubtype.SHA1,
    64: HashSubtype.SHA256,
    128: HashSubtype.SHA512,
}

_ITYPES_BY_KIND: Mapping[IntelKind, tuple[str, ...]] = {
    IntelKind.IP: (
        "actor_ip", "anon_proxy", "anon_vpn", "apt_ip", "bot_ip", "brute_ip", "c2_ip", "comm_proxy_ip",
        "compromised_ip", "crypto_ip", "ddos_ip", "downloader_ip", "exfil_ip", "exploit_ip", "fraud_ip", "i2p_ip",
        "infostealer_ip", "iot_ip", "mal_ip", "p2pcnc", "parked_ip", "phish_ip", "pos_ip", "proxy_ip",
        "ransomware_ip", "scan_ip", "sinkhole_ip", "spam_ip", "ssh_ip", "suspicious_ip", "tor_ip", "trojan_ip",
        "vps_ip",
    ),
    # No `suspicious_ipv6`: one client lists it, unconfirmed (accept it with `threatstream_extra_itypes`).
    IntelKind.IPV6: (
        "actor_ipv6", "anon_proxy_ipv6", "anon_vpn_ipv6", "apt_ipv6", "bot_ipv6", "brute_ipv6", "c2_ipv6",
        "compromised_ipv6", "ddos_ipv6", "downloader_ipv6", "exfil_ipv6", "exploit_ipv6", "fraud_ipv6", "i2p_ipv6",
        "infostealer_ipv6", "iot_ipv6", "mal_ipv6", "p2pcnc_ipv6", "parked_ipv6", "phish_ipv6", "pos_ipv6",
        "proxy_ipv6", "ransomware_ipv6", "scan_ipv6", "sinkhole_ipv6", "spam_ipv6", "ssh_ipv6", "tor_ipv6",
        "trojan_ipv6", "vps_ipv6",
    ),
    IntelKind.DOMAIN: (
        "adware_domain", "apt_domain", "bot_domain", "c2_domain", "comm_proxy_domain", "compromised_domain",
        "crypto_pool", "disposable_email_domain", "downloader_domain", "dyn_dns", "exfil_domain", "exploit_domain",
        "fraud_domain", "free_email_domain", "infostealer_domain", "iot_domain", "mal_domain", "parked_domain",
        "phish_domain", "pos_domain", "ransomware_domain", "sinkhole_domain", "spam_domain", "suspicious_domain",
        "trojan_domain", "vpn_domain", "whois_privacy_domain",
    ),
    IntelKind.URL: (
        "apt_url", "bot_url", "c2_url", "compromised_url", "crypto_url", "downloader_url", "exfil_url",
        "exploit_url", "fraud_url", "geolocation_url", "infostealer_url", "iot_url", "ipcheck_url", "mal_url",
        "parked_url", "pastesite_url", "phish_url", "pos_url", "ransomware_url", "social_media_url", "spam_url",
        "speedtest_url", "suspicious_url", "torrent_tracker_url", "trojan_url",
    ),
    # No `suspicious_md5` and no `c2_md5`: ThreatStream has neither.
    IntelKind.HASH: (
        "apt_md5", "bot_md5", "crypto_hash", "downloader_hash", "exploit_md5", "fraud_md5", "hack_tool",
        "hack_tool_md5", "image_hash", "infostealer_hash", "iot_hash", "mal_md5", "phish_md5", "pos_hash",
        "ransomware_hash", "rootkit_hash", "trojan_hash",
    ),
    IntelKind.EMAIL: (
        "apt_email", "compromised_email", "fraud_email", "mal_email", "phish_email", "spam_email",
        "suspicious_email", "suspicious_reg_email", "whois_bulk_reg_email", "whois_privacy_email",
    ),
}  # fmt: skip

ITYPES: Mapping[str, IntelKind] = {itype: kind for kind, names in _ITYPES_BY_KIND.items() for itype in names}

# The itype suffix of each kind, for the `mal_` / `suspicious_` forms the expected outcome uses.
ITYPE_SUFFIXES: Mapping[IntelKind, str] = {
    IntelKind.IP: "_ip",
    IntelKind.IPV6: "_ipv6",
    IntelKind.DOMAIN: "_domain",
    IntelKind.URL: "_url",
    IntelKind.HASH: "_md5",
    IntelKind.EMAIL: "_email",
}

# The keys a direct-upsert object carries its value under, per kind.
VALUE_FIELDS: Mapping[str, IntelKind] = {
    "srcip": IntelKind.IP,
    "ipv6": IntelKind.IPV6,
    "domain": IntelKind.DOMAIN,
    "url": IntelKind.URL,
    "md5": IntelKind.HASH,
    "email": IntelKind.EMAIL,
}

# The only itype fields of an import form any source documents; `ip_mapping` covers IPv6 too.
MAPPING_FIELDS: Mapping[str, tuple[IntelKind, ...]] = {
    "ip_mapping": (IntelKind.IP, IntelKind.IPV6),
    "domain_mapping": (IntelKind.DOMAIN,),
    "url_mapping": (IntelKind.URL,),
    "email_mapping": (IntelKind.EMAIL,),
    "md5_mapping": (IntelKind.HASH,),
}

# Every form field the import endpoint reads; anything else (e.g. `ipv6_mapping`) is ignored.
IMPORT_FORM_FIELDS = frozenset(
    {
        "datatext", "url", "file", "classification", "confidence", "source_confidence_weight", "threat_type",
        "severity", "default_state", "expiration_ts", "tags", "reject_benign", *MAPPING_FIELDS,
    }
)  # fmt: skip

STATUSES = ("active", "inactive", "falsepos")
SEVERITIES = ("low", "medium", "high", "very-high")
CLASSIFICATIONS = ("private", "public")


class TlpVocabulary(StrEnum):
    """Older ThreatStream documentation spells TLP `white|green|amber|red`; the newest OpenAPI uses TLP 2.0."""

    TLP1 = "tlp1"
    TLP2 = "tlp2"

    @property
    def names(self) -> tuple[str, ...]:
        if self is TlpVocabulary.TLP1:
            return ("white", "green", "amber", "red")
        return ("clear", "green", "amber", "amber+strict", "red")


def ipv6_itype_for(ip_itype: str, itypes: Mapping[str, IntelKind]) -> str | None:
    """The IPv6 itype an import applies when `ip_mapping` names an IPv4 one (`mal_ip` → `mal_ipv6`)."""
    candidates = (ip_itype.removesuffix("_ip") + "_ipv6", ip_itype + "_ipv6")
    return next((name for name in candidates if itypes.get(name) is IntelKind.IPV6), None)


class Permission(StrEnum):
    """What a ThreatStream user's API key may do (the sandbox's `threatstream_permissions`)."""

    IMPORT = "import"  # POST /api/v2/intelligence/import/ into the approval queue
    APPROVE_IMPORT = "approve_import"  # default_state=active, and approve_all
    APPROVE_INTEL = "approve_intel"  # direct upsert, and editing an object by id
