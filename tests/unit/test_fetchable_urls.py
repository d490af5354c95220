"""SPEC §3: image (and every message) URL is https, without userinfo, not to a non-public IP literal."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from escalation.domain import messages
from escalation.domain.session import Sender
from escalation.domain.urls import fetchable_url_problem
from escalation.domain.validation import Violations
from escalation.v1 import common_pb2

ACCEPTED = [
    "https://img.example.com/a.png",
    "https://IMG.Example.COM./a.png?x=1#y",
    "https://cdn.example.com:8443/a.png",
    "https://xn--fsq.example/a.png",  # an IDN in its ASCII form
    "https://8.8.8.8/a.png",
    "https://1.1.1.1:443/a.png",
    "https://[2001:4860:4860::8888]/a.png",
    "https://example.com/path/127.0.0.1/user@x",  # '@' and an IP in the path are not the host
    "https://a.example/%2e%2e/x",
]

REFUSED = [
    # not https, no host
    "http://img.example.com/a.png",
    "ftp://img.example.com/a.png",
    "https:///a.png",
    "https:img.example.com/a.png",
    # userinfo
    "https://user:pass@img.example.com/a.png",
    "https://user@img.example.com/a.png",
    "https://:@img.example.com/a.png",
    "https://img.example.com@127.0.0.1/a.png",
    # localhost
    "https://localhost/a.png",
    "https://LOCALHOST:8443/a.png",
    "https://localhost./a.png",
    "https://api.localhost/a.png",
    # IPv4 loopback, private, link-local, unspecified, multicast, reserved, shared, broadcast
    "https://127.0.0.1/a.png",
    "https://127.0.0.1:50051/",
    "https://127.255.255.254/",
    "https://10.0.0.1/",
    "https://172.16.5.4/",
    "https://192.168.1.1/",
    "https://169.254.169.254/latest/meta-data/",
    "https://0.0.0.0/",
    "https://224.0.0.1/",
    "https://239.1.2.3/",
    "https://240.0.0.1/",
    "https://255.255.255.255/",
    "https://100.64.0.1/",
    # IPv4 in the forms clients also read (WHATWG): integer, hex, octal, short, trailing dot
    "https://2130706433/",
    "https://0x7f000001/",
    "https://0x7f.1/",
    "https://0x7F.0x0.0x0.0x1/",
    "https://0177.0.0.1/",
    "https://017700000001/",
    "https://127.1/",
    "https://127.0.1/",
    "https://0/",
    "https://0x/",
    "https://127.0.0.1./",
    "https://169.254.43518/",
    "https://3232235777/",  # 192.168.1.1
    # numbers that are no address at all
    "https://256.0.0.1/",
    "https://1.2.3.4.5/",
    "https://4294967296/",
    "https://08.0.0.1/",
    "https://example.123/",
    # IPv6: loopback, unspecified, link-local, unique-local, multicast, mapped/compatible/6to4/NAT64 IPv4
    "https://[::1]/",
    "https://[::]/",
    "https://[0:0:0:0:0:0:0:1]:8443/",
    "https://[fe80::1]/",
    "https://[fe80::1%25eth0]/",
    "https://[fc00::1]/",
    "https://[fd12:3456::1]/",
    "https://[ff02::1]/",
    "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:7f00:1]/",
    "https://[::ffff:169.254.169.254]/",
    "https://[::ffff:10.0.0.1]/",
    "https://[::127.0.0.1]/",
    "https://[64:ff9b::7f00:1]/",
    "https://[2002:7f00:1::]/",
    "https://[2002:a9fe:a9fe::]/",
    "https://[not-an-ip]/",
    # hosts a client would decode or map before reading: percent-escapes, full-width digits, backslash
    "https://%31%32%37.0.0.1/",
    "https://\uff11\uff12\uff17.0.0.1/",
    "https://127.0.0.1\\@img.example.com/",
    "https://127.0.0.1\\img.example.com/",
    "https://img_example.com/",
    "https://-img.example.com/",
    # ports
    "https://img.example.com:99999/",
    "https://img.example.com:port/",
]


@pytest.mark.parametrize("url", ACCEPTED)
def test_public_https_urls_are_accepted(url: str) -> None:
    assert fetchable_url_problem(url) is None


@pytest.mark.parametrize("url", REFUSED)
def test_urls_fetchers_must_not_follow_are_refused(url: str) -> None:
    assert fetchable_url_problem(url) is not None


@pytest.mark.parametrize(
    "url", ["https://169.254.169.254/x.png", "https://user:pass@host.example/x.png", "https://2130706433/"]
)
def test_an_image_message_names_the_bad_url_field(url: str) -> None:
    check = Violations()
    content = common_pb2.MessageContent(image=common_pb2.Image(url=url, width=10, height=10))
    messages.content(check, "content", content, Sender.MERCHANT)
    assert [v.field for v in check._items] == ["content.image.url"]
    assert "https" in check._items[0].description or "must not" in check._items[0].description


@given(st.text(max_size=60))
def test_any_text_gets_an_answer_never_an_exception(tail: str) -> None:
    for url in (tail, "https://" + tail, "https://[" + tail, "https://a.example:" + tail):
        fetchable_url_problem(url)
