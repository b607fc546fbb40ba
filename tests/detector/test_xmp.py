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


_RDF_NS = f'xmlns:rdf="{NS["rdf"]}"'


def test_deep_nesting_is_refused_quickly():
    """40,000 nested elements took minutes to flatten (each property walked its subtree)."""
    ns = 'xmlns:a="http://example.com/a/"'
    deep = f"<rdf:RDF {_RDF_NS} {ns}>" + "<a:b>" * 40_000 + "x" + "</a:b>" * 40_000 + "</rdf:RDF>"
    with pytest.raises(XmpError, match="deeper than 64"):
        parse_xmp(deep)
    ok = f"<rdf:RDF {_RDF_NS} {ns}>" + "<a:b>" * 60 + "x" + "</a:b>" * 60 + "</rdf:RDF>"
    assert parse_xmp(ok)[("http://example.com/a/", "b")] == ["x"]


@pytest.mark.parametrize(
    "wrap",
    [
        # any prefix for the RDF namespace, no x:xmpmeta wrapper
        lambda p: p.replace("rdf:", "r:").replace("xmlns:rdf=", "xmlns:r="),
        # a comment that mentions the wrapper before the packet, an XML declaration first
        lambda p: '<?xml version="1.0"?><!-- copied from <x:xmpmeta --> ' + p,
        # NUL padding after the packet
        lambda p: p + "\0" * 100,
    ],
)
def test_packet_forms_other_writers_use(wrap):
    packet = (
        f'<rdf:RDF {_RDF_NS}><rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        'xmp:CreatorTool="Tool B"/></rdf:RDF>'
    )
    assert parse_xmp(wrap(packet))[(NS["xmp"], "CreatorTool")] == ["Tool B"]


def test_an_unclosed_processing_instruction_flood_is_refused():
    """One pass over the packet (a regex retrying at each "<?" was quadratic: hours here)."""
    with pytest.raises(XmpError, match=r"no XMP root|malformed"):
        parse_xmp("<?" * 1_000_000 + "<a>")


@pytest.mark.parametrize(
    "wrap",
    [
        lambda p: (
            '<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>' + p + '<?xpacket end="w"?>x>y'
        ),
        lambda p: "junk < here " + p,
        lambda p: '<?xpacket begin="" ' + p,  # the wrapper's instruction never closed
    ],
)
def test_junk_around_the_conventional_tags_still_reads(wrap):
    """Shapes the reader took before it cut from the first '<' to the last '>': the packet
    between its x:xmpmeta tags is parsed when the wider cut is not XML."""
    packet = (
        f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF {_RDF_NS}><rdf:Description '
        'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="Tool C"/></rdf:RDF></x:xmpmeta>'
    )
    assert parse_xmp(wrap(packet))[(NS["xmp"], "CreatorTool")] == ["Tool C"]
