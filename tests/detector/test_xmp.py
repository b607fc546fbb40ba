from __future__ import annotations

import pytest

from detector.xmp import NS, XmpError, parse_xmp

pytestmark = pytest.mark.unit

PACKET = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/"
   xmp:CreatorTool="Tool A">
  <dc:creator><rdf:Seq><rdf:li>Alice</rdf:li><rdf:li>Bob</rdf:li></rdf:Seq></dc:creator>
  <dc:title><rdf:Alt><rdf:li xml:lang="x-default">A title</rdf:li></rdf:Alt></dc:title>
</rdf:Description></rdf:RDF></x:xmpmeta>
<?xpacket end="w"?>"""


def test_attribute_seq_and_alt_forms():
    props = parse_xmp(PACKET)
    assert props[(NS["xmp"], "CreatorTool")] == ["Tool A"]
    assert props[(NS["dc"], "creator")] == ["Alice", "Bob"]
    assert props[(NS["dc"], "title")] == ["A title"]


@pytest.mark.parametrize(
    "packet,reason",
    [
        ("<x:xmpmeta", "no XMP root|malformed"),
        ('<!DOCTYPE x [<!ENTITY a "b">]><rdf:RDF xmlns:rdf="r"/>', "refused"),
        ("no xml here", "no XMP root"),
        ("<rdf:RDF>" + "a" * (5 * 1024 * 1024) + "</rdf:RDF>", "too large"),
    ],
)
def test_bad_packets_raise_xmp_error(packet, reason):
    with pytest.raises(XmpError, match=reason):
        parse_xmp(packet)
