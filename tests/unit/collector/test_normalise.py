"""Normalisation: canonical forms, refanging, rejections, and properties over arbitrary text."""

from __future__ import annotations

import ipaddress

import idna
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tibridge.collector.normalise import (
    KeyKind,
    kind_of_key,
    normalise,
    normalise_keyed,
    normalise_pattern,
    parse_pattern,
    refang,
)
from tibridge.common.contracts import HashAlgorithm, Observable, ObservableType, RejectionReason

INVALID = RejectionReason.INVALID_VALUE
NON_GLOBAL = RejectionReason.NON_GLOBAL_IP
KEYS = (
    "ipv4-addr:value",
    "ipv6-addr:value",
    "network-traffic:src_ref.value",
    "network-traffic:dst_ref.value",
    "domain-name:value",
    "url:value",
    "email-addr:value",
    "file:hashes.MD5",
    "file:hashes.'SHA-1'",
    "file:hashes.'SHA-256'",
)


def value_of(key: str, raw: str) -> str | RejectionReason:
    result = normalise_keyed(key, raw, reject_non_global=True)
    return result if isinstance(result, RejectionReason) else result.value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("evil[.]example(.)com", "evil.example.com"),
        ("evil[dot]example[DOT]com", "evil.example.com"),
        ("hxxps[:]//evil[.]com/x", "https://evil.com/x"),
        ("HXXP://evil.com", "http://evil.com"),
        ("user[@]evil[.]com", "user@evil.com"),
        ("x[[.]]y", "x.y"),  # nested defanging: refanged until nothing changes
        ("plain.example.com", "plain.example.com"),
    ],
)
def test_refang_undoes_the_usual_defanging(text: str, expected: str) -> None:
    assert refang(text) == expected


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("ipv4-addr:value", " 8.8.8[.]8 ", "8.8.8.8"),
        ("ipv4-addr:value", "8(.)8.8.8", "8.8.8.8"),
        ("network-traffic:src_ref.value", "8.8.4.4", "8.8.4.4"),
        ("ipv6-addr:value", "2001:4860:4860:0000:0000:0000:0000:8888", "2001:4860:4860::8888"),
        ("ipv6-addr:value", "2001:4860:4860::8888".upper(), "2001:4860:4860::8888"),
        ("network-traffic:dst_ref.value", "2606:4700::6810:84e5", "2606:4700::6810:84e5"),
        ("ipv4-addr:value", "10.1.2.3", NON_GLOBAL),
        ("ipv4-addr:value", "192.168.0.1", NON_GLOBAL),
        ("ipv4-addr:value", "127.0.0.1", NON_GLOBAL),
        ("ipv4-addr:value", "169.254.1.1", NON_GLOBAL),
        ("ipv6-addr:value", "::1", NON_GLOBAL),
        ("ipv6-addr:value", "fe80::1", NON_GLOBAL),
        ("ipv6-addr:value", "fd00::1", NON_GLOBAL),
        ("ipv4-addr:value", "256.1.1.1", INVALID),
        ("ipv4-addr:value", "1.2.3", INVALID),
        ("ipv4-addr:value", "not-an-ip", INVALID),
        ("ipv6-addr:value", "::1::2", INVALID),
        ("ipv6-addr:value", "fe80::1%eth0", INVALID),
        ("ipv4-addr:value", "", INVALID),
    ],
)
def test_ip_addresses(key: str, raw: str, expected: str | RejectionReason) -> None:
    assert value_of(key, raw) == expected


def test_ip_version_comes_from_the_value_not_the_key() -> None:
    result = normalise_keyed("ipv4-addr:value", "2606:4700::1", reject_non_global=True)
    assert isinstance(result, Observable)
    assert result.type is ObservableType.IPV6


def test_non_global_addresses_pass_when_the_setting_is_off() -> None:
    result = normalise_keyed("ipv4-addr:value", "10.0.0.1", reject_non_global=False)
    assert result == Observable(type=ObservableType.IPV4, value="10.0.0.1")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Evil.Example.COM", "evil.example.com"),
        ("evil.example.com.", "evil.example.com"),
        ("evil[.]example[.]com", "evil.example.com"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("BÜCHER.de", "xn--bcher-kva.de"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("XN--BCHER-KVA.DE", "xn--bcher-kva.de"),
        ("пример.рф", idna.encode("пример.рф", uts46=True).decode()),
        ("not a domain", INVALID),
        ("a..b.com", INVALID),
        ("-start.example.com", INVALID),
        ("bad!.example.com", INVALID),
        ("localhost", INVALID),  # a single label is no shareable domain
        ("1.2.3.4", INVALID),
        ("x" * 64 + ".com", INVALID),
        ("example.com..", INVALID),
    ],
)
def test_domains(raw: str, expected: str | RejectionReason) -> None:
    assert value_of("domain-name:value", raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("HTTP://Evil.Example.COM/Path?Q=A", "http://evil.example.com/Path?Q=A"),
        ("https://evil.com", "https://evil.com/"),
        ("https://evil.com:443/x", "https://evil.com/x"),
        ("http://evil.com:80/x", "http://evil.com/x"),
        ("http://evil.com:8080/x", "http://evil.com:8080/x"),
        ("https://evil.com/x#frag", "https://evil.com/x"),
        ("hxxps://evil[.]com/a", "https://evil.com/a"),
        ("http[:]//evil.com/a", "http://evil.com/a"),
        ("http://bücher.de/x", "http://xn--bcher-kva.de/x"),
        ("http://user@evil.com/", "http://user@evil.com/"),
        ("http://[2606:4700:0::1]:8443/", "http://[2606:4700::1]:8443/"),
        ("http://8.8.8.8/x", "http://8.8.8.8/x"),
        ("http://10.0.0.1/x", NON_GLOBAL),
        ("not a url", INVALID),
        ("http://", INVALID),
        ("://no-scheme.example.com/x", INVALID),
        ("http:// spaced.example.com/", INVALID),
        ("http://evil.com:99999/", INVALID),
        ("http://[::1/", INVALID),
        ("evil.com/path", INVALID),
    ],
)
def test_urls(raw: str, expected: str | RejectionReason) -> None:
    assert value_of("url:value", raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("J.Smith@Evil.COM", "J.Smith@evil.com"),
        ("admin[@]evil[.]com", "admin@evil.com"),
        ("x@bücher.de", "x@xn--bcher-kva.de"),
        ("no-at-sign.example.com", INVALID),
        ("@example.com", INVALID),
        ("user@", INVALID),
        ("two@@example.com", INVALID),
        ("sp ace@example.com", INVALID),
    ],
)
def test_emails_keep_the_local_part(raw: str, expected: str | RejectionReason) -> None:
    assert value_of("email-addr:value", raw) == expected


@pytest.mark.parametrize(
    ("key", "algorithm", "length"),
    [
        ("file:hashes.MD5", HashAlgorithm.MD5, 32),
        ("file:hashes.'SHA-1'", HashAlgorithm.SHA1, 40),
        ("file:hashes.'SHA-256'", HashAlgorithm.SHA256, 64),
    ],
)
def test_hashes_take_their_algorithm_from_the_key(key: str, algorithm: HashAlgorithm, length: int) -> None:
    digest = "AbCdEf0123456789" * 4
    result = normalise_keyed(key, digest[:length], reject_non_global=True)
    assert result == Observable(type=ObservableType.FILE_HASH, value=digest[:length].lower(), hash_algorithm=algorithm)
    assert normalise_keyed(key, digest[: length - 1], reject_non_global=True) == INVALID
    assert normalise_keyed(key, "z" * length, reject_non_global=True) == INVALID


def test_unknown_keys_are_unsupported() -> None:
    assert (
        normalise_keyed("mac-addr:value", "aa:bb:cc:dd:ee:ff", reject_non_global=True)
        == RejectionReason.UNSUPPORTED_TYPE
    )
    assert (
        normalise_keyed("file:hashes.'SHA3-256'", "ab" * 32, reject_non_global=True) == RejectionReason.UNSUPPORTED_TYPE
    )
    assert kind_of_key("file:hashes.'MD5'") == KeyKind(ObservableType.FILE_HASH, HashAlgorithm.MD5)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("[domain-name:value = 'Evil.COM']", "evil.com"),
        ("  [ url:value='http://a.com/it\\'s' ]  ", "http://a.com/it's"),
        ("[file:hashes.'SHA-256' = '" + "A" * 64 + "']", "a" * 64),
        ("[ipv4-addr:value = '8.8.8.8'] AND [domain-name:value = 'x.com']", RejectionReason.UNPARSED_PATTERN),
        ("[ipv4-addr:value MATCHES '8.8.8.8']", RejectionReason.UNPARSED_PATTERN),
        ("[ipv4-addr:value != '8.8.8.8']", RejectionReason.UNPARSED_PATTERN),
        ("", RejectionReason.UNPARSED_PATTERN),
        ("[mac-addr:value = 'aa:bb:cc:dd:ee:ff']", RejectionReason.UNSUPPORTED_TYPE),
        ("[windows-registry-key:key = 'HKLM\\\\Run']", RejectionReason.UNSUPPORTED_TYPE),
        ("[ipv4-addr:value = '10.0.0.1']", NON_GLOBAL),
    ],
)
def test_patterns_with_one_comparison_are_recovered(pattern: str, expected: str | RejectionReason) -> None:
    result = normalise_pattern(pattern, reject_non_global=True)
    assert (result if isinstance(result, RejectionReason) else result.value) == expected


def test_pattern_values_are_unescaped() -> None:
    comparison = parse_pattern(r"[url:value = 'http://a.com/\\x\'y']")
    assert comparison is not None
    assert comparison.value == "http://a.com/\\x'y"


# --- properties -------------------------------------------------------------------------------------------

_keys = st.sampled_from(KEYS)
_hostile_text = st.text(
    alphabet=st.sampled_from(list("aZ09.-_:/@[]()%?#=& \t\n'\\ü例\u200d\u3002")) | st.characters(), max_size=80
)
_addresses = st.ip_addresses().map(str)
_hosts = st.from_regex(r"[a-zA-Z0-9]{1,10}(\.[a-zA-Z0-9-]{0,8}[a-zA-Z0-9]){1,3}\.?", fullmatch=True)
_urls = st.builds(
    lambda scheme, host, port, path, fragment: f"{scheme}://{host}{port}{path}{fragment}",
    st.sampled_from(["http", "HTTPS", "hxxp", "ftp"]),
    _hosts,
    st.sampled_from(["", ":80", ":443", ":8080", ":"]),
    st.from_regex(r"(/[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,12}){0,3}(\?[A-Za-z0-9=&%]{0,10})?", fullmatch=True),
    st.sampled_from(["", "#x", "#"]),
)


@settings(max_examples=400, deadline=None)
@given(key=_keys, raw=_hostile_text | _addresses | _hosts | _urls)
@example(key="url:value", raw="http://a.com/x[[.]]y")
@example(key="url:value", raw="http://a.com:/")
@example(key="domain-name:value", raw="a\u3002com")
def test_never_raises_and_canonical_output_is_a_fixpoint(key: str, raw: str) -> None:
    first = normalise_keyed(key, raw, reject_non_global=True)
    assert isinstance(first, Observable | RejectionReason)
    if isinstance(first, Observable):
        assert normalise_keyed(key, first.value, reject_non_global=True) == first, (
            "canonical output must re-normalise to itself"
        )


@settings(max_examples=200, deadline=None)
@given(address=st.ip_addresses())
def test_every_address_is_canonical_or_non_global(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    result = normalise(KeyKind(None), address.exploded, reject_non_global=True)
    if address.is_global:
        assert result == Observable(
            type=ObservableType.IPV4 if address.version == 4 else ObservableType.IPV6, value=str(address)
        )
    else:
        assert result == NON_GLOBAL


@settings(max_examples=200, deadline=None)
@given(pattern=st.text(max_size=60) | st.builds(lambda k, v: f"[{k} = '{v}']", _keys, _hostile_text))
def test_patterns_never_raise(pattern: str) -> None:
    assert isinstance(normalise_pattern(pattern, reject_non_global=True), Observable | RejectionReason)
