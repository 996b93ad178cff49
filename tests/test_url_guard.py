"""The SSRF rules: URL syntax (the gateway's 422) and address ranges (nodes)."""

from __future__ import annotations

import pytest

from schemas.url_guard import UrlRefused, check_address, check_submitted, check_syntax, refusal


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.mp3",
        "gopher://x",
        "javascript:alert(1)",
        "//example.com/a",
        "example.com/a.mp3",
        "http://",
        "http://exa mple.com/",
        "http://example.com:99999/",
        "",
        "http://a\n.com/",
    ],
)
def test_syntax_refuses_anything_but_plain_http_urls(url):
    with pytest.raises(UrlRefused):
        check_syntax(url)


def test_syntax_accepts_http_and_https():
    assert check_syntax(" https://www.youtube.com/watch?v=abc ") == "https://www.youtube.com/watch?v=abc"
    assert check_syntax("http://127.0.0.1:8080/a.wav")  # addresses are the node's business


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "10.0.0.5",
        "172.16.3.4",
        "192.168.1.1",
        "169.254.1.1",
        "100.64.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
    ],
)
def test_private_ranges_are_refused_unless_allowed(ip):
    assert refusal(ip, allow_private=False) is not None
    assert refusal(ip, allow_private=True) is None


@pytest.mark.parametrize(
    "ip", ["169.254.169.254", "fd00:ec2::254", "100.100.100.200", "0.0.0.0", "224.0.0.1", "240.0.0.1"]
)
def test_metadata_and_non_unicast_are_always_refused(ip):
    assert refusal(ip, allow_private=True) is not None


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "142.250.74.110"])
def test_public_addresses_pass(ip):
    assert refusal(ip, allow_private=False) is None


def test_refusal_message_names_host_address_and_the_setting():
    with pytest.raises(UrlRefused) as e:
        check_address("intranet.example", "10.1.2.3", allow_private=False)
    assert "intranet.example resolves to 10.1.2.3" in e.value.message
    assert "GPUBUS_ALLOW_PRIVATE_URLS" in e.value.message


@pytest.mark.parametrize(
    "ip",
    ["::7f00:1", "::a00:1", "64:ff9b:1::7f00:1", "64:ff9b:1::a9fe:a9fe", "2002:7f00:1::", "2002:a9fe:a9fe::1"],
)
def test_ipv6_forms_that_embed_an_ipv4_address_are_judged_by_it(ip):
    # IPv4-compatible, local-use NAT64 (RFC 8215) and 6to4 reach the IPv4 address they carry
    assert refusal(ip, allow_private=False) is not None


def test_embedded_metadata_address_stays_refused_with_private_allowed():
    for ip in ("::a9fe:a9fe", "64:ff9b:1::a9fe:a9fe", "2002:a9fe:a9fe::"):
        assert "metadata" in refusal(ip, allow_private=True)


@pytest.mark.parametrize("ip", ["2002:808:808::1", "64:ff9b:1::808:808", "::808:808"])
def test_embedded_public_ipv4_passes(ip):
    assert refusal(ip, allow_private=False) is None


@pytest.mark.parametrize("ip", ["4000::1", "5f00::1", "3fff::1", "2001:db8::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2"])
def test_ipv6_outside_global_unicast_or_in_special_blocks_is_refused(ip):
    assert refusal(ip, allow_private=False) is not None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.wav",
        "http://[::1]/a",
        "http://10.0.0.1/a",
        "http://2130706433/a",
        "http://0x7f000001/a",
        "http://127.1/a",
        "http://[::ffff:127.0.0.1]/a",
        "http://[::7f00:1]/a",
        "http://[2002:7f00:1::]/a",
    ],
)
def test_submit_refuses_a_private_address_literal_unless_allowed(url):
    with pytest.raises(UrlRefused):
        check_submitted(url, allow_private=False)
    assert check_submitted(url, allow_private=True) == url


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/", "http://2852039166/"]
)
def test_submit_refuses_metadata_literals_always(url):
    with pytest.raises(UrlRefused, match="metadata"):
        check_submitted(url, allow_private=True)


@pytest.mark.parametrize("url", ["https://www.youtube.com/watch?v=abc", "http://8.8.8.8/a.mp3", "http://localhost/a"])
def test_submit_leaves_names_and_public_literals_to_the_node(url):
    assert check_submitted(url, allow_private=False) == url
