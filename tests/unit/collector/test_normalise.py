"""Normalisation: canonical forms, refanging, rejections, and properties over arbitrary text."""

from __future__ import annotations

import ipaddress
import re

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
    "file:hashes.SHA512",
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
        ("http://-bad.example.com/", INVALID),
        ("http://a..b.com/", INVALID),
        ("http://<script>/x", INVALID),
        ("http://ev%69l.com/", INVALID),
        ("javascript:alert(1)", INVALID),
        ("http://evil.com/<script>alert(1)</script>", "http://evil.com/%3Cscript%3Ealert(1)%3C/script%3E"),
        ('http://evil.com/a"b{c}|d^e`f\\g', "http://evil.com/a%22b%7Bc%7D%7Cd%5Ee%60f%5Cg"),
        ("http://evil.com/%zz?q=%41%", "http://evil.com/%25zz?q=%41%25"),
        ("http://evil.com/caf\u00e9?q=\u4f8b", "http://evil.com/caf%C3%A9?q=%E4%BE%8B"),
        ("http://us<er>:pa ss@evil.com/", INVALID),  # a space is never part of a URL
        ("http://us<er>:pass@evil.com/", "http://us%3Cer%3E:pass@evil.com/"),
        ("http://evil.com/" + "a" * 4080, "http://evil.com/" + "a" * 4080),
        ("http://evil.com/" + "a" * 4081, INVALID),
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
        ("first.o'reilly+tag@example.com", "first.o'reilly+tag@example.com"),
        ("<script>alert(1)</script>@evil-xss.com", INVALID),  # markup is not an address (issue 13)
        ('"quoted local"@example.com', INVALID),
        ("user@[192.0.2.1]", INVALID),  # a domain literal is no domain
        ("user@-evil.com", INVALID),
        ("user@evil", INVALID),
        (".lead@example.com", INVALID),
        ("trail.@example.com", INVALID),
        ("two..dots@example.com", INVALID),
        ("üser@example.com", INVALID),  # no UTF-8 local parts: ThreatStream's grammar is ASCII
        ("x" * 64 + "@example.com", "x" * 64 + "@example.com"),
        ("x" * 65 + "@example.com", INVALID),
        ("x" * 64 + "@" + ".".join(["d" * 60] * 4) + ".com", INVALID),  # 254 characters at most
        ("user@exa\tmple.com", INVALID),
    ],
)
def test_emails_keep_the_local_part(raw: str, expected: str | RejectionReason) -> None:
    assert value_of("email-addr:value", raw) == expected


@pytest.mark.parametrize(
    ("key", "algorithm", "length"),
    [
        ("file:hashes.MD5", HashAlgorithm.MD5, 32),
        ("file:hashes.'MD5'", HashAlgorithm.MD5, 32),
        ("file:hashes.'SHA-1'", HashAlgorithm.SHA1, 40),
        ("file:hashes.SHA1", HashAlgorithm.SHA1, 40),
        ("file:hashes.'SHA-256'", HashAlgorithm.SHA256, 64),
        ("file:hashes.'SHA256'", HashAlgorithm.SHA256, 64),
        ("file:hashes.SHA256", HashAlgorithm.SHA256, 64),
        ("file:hashes.'SHA-512'", HashAlgorithm.SHA512, 128),
        ("file:hashes.SHA512", HashAlgorithm.SHA512, 128),
        ("FILE:HASHES.'sha-512'", HashAlgorithm.SHA512, 128),  # KQL's startswith ignores case, and so do we
    ],
)
def test_hashes_take_their_algorithm_from_the_key(key: str, algorithm: HashAlgorithm, length: int) -> None:
    digest = "AbCdEf0123456789" * 8
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
    assert normalise_keyed("file:hashes.", "ab" * 16, reject_non_global=True) == RejectionReason.UNSUPPORTED_TYPE
    assert kind_of_key("file:hashes.'MD5'") == KeyKind(ObservableType.FILE_HASH, HashAlgorithm.MD5)
    assert kind_of_key("file:hashes." + "x" * 200) is None


# --- bounded work on hostile values (issue 13) -------------------------------------------------------------


def nested_defang(depth: int) -> str:
    """`evil[[[[…].]]]]x.com`: the ~500 KB domain that kept `run --once` busy past two minutes."""
    return "evil" + "[" * depth + "." + "]" * depth + "x.com"


def test_the_nested_defang_domain_is_refused_by_its_length_before_any_other_work() -> None:
    hostile = nested_defang(250_000)
    assert len(hostile) > 500_000
    assert value_of("domain-name:value", hostile) == INVALID
    assert value_of("url:value", f"http://{hostile}/") == INVALID
    assert value_of("email-addr:value", f"a@{hostile}") == INVALID
    assert normalise_pattern(f"[domain-name:value = '{hostile}']", reject_non_global=True) in (
        INVALID,
        RejectionReason.UNPARSED_PATTERN,
    )


def test_nested_defanging_is_undone_in_one_pass_whatever_its_depth() -> None:
    # Refanging a 500 KB run is one scan (each bracket run is consumed once), not one scan per nesting level.
    assert refang(nested_defang(250_000)) == "evil.x.com"
    assert refang("[" * 250_000) == "[" * 250_000
    assert value_of("domain-name:value", nested_defang(100)) == "evil.x.com"


@pytest.mark.parametrize(
    ("key", "limit"),
    [("domain-name:value", 253), ("email-addr:value", 254), ("url:value", 4096)],
)
def test_canonical_values_have_their_standard_length_at_most(key: str, limit: int) -> None:
    long_domain = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 57]) + ".com"  # 253 characters
    assert len(long_domain) == 253
    assert value_of("domain-name:value", long_domain) == long_domain
    assert value_of("domain-name:value", "a" + long_domain) == INVALID
    assert value_of("domain-name:value", long_domain.replace(".", "[.]")) == long_domain  # defanged, still fine
    result = normalise_keyed(key, "x" * (3 * limit + 1), reject_non_global=True)
    assert result == INVALID  # past what even a defanged value can be: refused unread


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


# --- per kind: whatever normalisation emits re-normalises to itself and passes a strict validator ----------

# Independent of the normaliser: the standards' grammars, written out (RFC 1035/1123 + IDNA 2008 round trip for
# host names, RFC 5322 dot-atom for local parts, RFC 3986 for URLs).
_LDH_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_STRICT_DOMAIN = re.compile(rf"(?=.{{3,253}}$)(?:{_LDH_LABEL}\.)+(?![0-9]+$){_LDH_LABEL}")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_STRICT_LOCAL = re.compile(rf"{_ATEXT}{{1,64}}(?:\.{_ATEXT}+)*")
_PCHAR = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})"
_STRICT_URL = re.compile(
    rf"(?P<scheme>[a-z][a-z0-9+.-]*)://(?:(?:[A-Za-z0-9\-._~!$&'()*+,;=:]|%[0-9A-Fa-f]{{2}})*@)?"
    rf"(?P<host>\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::(?P<port>[0-9]{{1,5}}))?(?:/{_PCHAR}*)+(?:\?(?:{_PCHAR}|[/?])*)?"
)


def strictly_a_domain(value: str) -> bool:
    if not _STRICT_DOMAIN.fullmatch(value):
        return False
    for label in value.split("."):
        if label[2:4] == "--":
            if not label.startswith("xn--"):
                return False
            try:  # an A-label must be the IDNA 2008 encoding of some U-label, and encode back to itself
                if idna.encode(idna.decode(label)).decode() != label:
                    return False
            except idna.IDNAError:
                return False
    return True


def strictly_valid(observable: Observable) -> bool:
    value = observable.value
    match observable.type:
        case ObservableType.IPV4 | ObservableType.IPV6:
            address = ipaddress.ip_address(value)
            return str(address) == value and (address.version == 4) == (observable.type is ObservableType.IPV4)
        case ObservableType.DOMAIN:
            return strictly_a_domain(value)
        case ObservableType.EMAIL:
            local, _, domain = value.partition("@")
            return (
                len(value) <= 254
                and len(local) <= 64
                and bool(_STRICT_LOCAL.fullmatch(local))
                and (strictly_a_domain(domain))
            )
        case ObservableType.URL:
            match = _STRICT_URL.fullmatch(value)
            if match is None or len(value) > 4096:
                return False
            host = match["host"]
            if host.startswith("["):
                return ipaddress.ip_address(host[1:-1]).version == 6
            return (host.replace(".", "").isdigit() and str(ipaddress.ip_address(host)) == host) or strictly_a_domain(
                host
            )
        case ObservableType.FILE_HASH:
            assert observable.hash_algorithm is not None
            return re.fullmatch(f"[0-9a-f]{{{observable.hash_algorithm.hex_length}}}", value) is not None
    return False


_hostile = st.sampled_from([*"<>\"'`{}|\\^ \t\n[]()@:/?#%.-_~!$&*+,;=", "ü", "例", "\u200d", "\u202e", "\x00"])
_label = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", fullmatch=True) | st.sampled_from(
    ["bücher", "пример", "xn--bcher-kva", "xn--zz", "a--b", "-x", "x-", "1"]
)
_domain_like = st.builds(
    lambda labels, tld, dot, defang: defang.join(labels) + defang + tld + dot,
    st.lists(_label, min_size=1, max_size=4),
    st.sampled_from(["com", "de", "ru", "xn--p1ai", "123", "c0m", "x"]),
    st.sampled_from(["", "."]),
    st.sampled_from([".", "[.]", "(.)", "[dot]", "[[.]]", ".."]),
)
_noisy_text = st.text(alphabet=_hostile | st.characters(codec="utf-8"), max_size=24)
_emails = st.builds(
    lambda local, at, domain: f"{local}{at}{domain}",
    st.from_regex(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,20}", fullmatch=True) | _noisy_text,
    st.sampled_from(["@", "[@]", "@@", ""]),
    _domain_like,
)
_url_parts = st.text(alphabet=_hostile | st.characters(codec="utf-8") | st.sampled_from(list("aZ09")), max_size=30)
_url_like = st.builds(
    lambda scheme, user, host, port, path, query, fragment: f"{scheme}://{user}{host}{port}/{path}{query}{fragment}",
    st.sampled_from(["http", "HTTPS", "hxxp", "hxxps", "ftp", "h ttp", "1http"]),
    st.sampled_from(["", "user@", "u:p@", "a<b>@", "x@y@"]),
    _domain_like | st.sampled_from(["8.8.8.8", "[2606:4700::1]", "[fe80::1%25eth0]", "10.0.0.1", "[::1"]),
    st.sampled_from(["", ":80", ":8443", ":99999", ":x"]),
    _url_parts,
    st.sampled_from(["", "?"]).flatmap(lambda mark: _url_parts.map(lambda q: mark + q if mark else "")),
    st.sampled_from(["", "#frag", "#<x>"]),
)
_hashes = st.builds(
    lambda digest, upper: digest.upper() if upper else digest,
    st.text(alphabet="0123456789abcdef", min_size=30, max_size=130) | _noisy_text,
    st.booleans(),
)
_per_kind = st.one_of(
    st.tuples(st.just("domain-name:value"), _domain_like | _noisy_text),
    st.tuples(st.just("email-addr:value"), _emails),
    st.tuples(st.just("url:value"), _url_like),
    st.tuples(st.sampled_from(["ipv4-addr:value", "ipv6-addr:value"]), _addresses | _noisy_text),
    st.tuples(
        st.sampled_from(["file:hashes.MD5", "file:hashes.'SHA-1'", "file:hashes.SHA256", "file:hashes.'SHA-512'"]),
        _hashes,
    ),
)


@settings(max_examples=1500, deadline=None)
@given(case=_per_kind)
@example(case=("email-addr:value", "<script>alert(1)</script>@evil-xss.com"))
@example(case=("url:value", "http://evil.com/<script>alert(1)</script>"))
@example(case=("domain-name:value", nested_defang(20)))
def test_whatever_is_emitted_re_normalises_to_itself_and_is_strictly_valid(case: tuple[str, str]) -> None:
    key, raw = case
    first = normalise_keyed(key, raw, reject_non_global=False)
    assert isinstance(first, Observable | RejectionReason)
    if isinstance(first, Observable):
        assert normalise_keyed(key, first.value, reject_non_global=False) == first
        assert strictly_valid(first), first
