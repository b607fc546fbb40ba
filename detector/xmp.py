"""A small, defensive reader of XMP packets.

XMP is RDF/XML written by many tools in several equivalent shapes: a property can be an
attribute of ``rdf:Description``, an element with text, an element with ``rdf:resource``, or an
``rdf:Alt/Seq/Bag`` of ``rdf:li`` items. ``parse_xmp`` flattens all of them into
``{(namespace, name): [values]}``. Packets that declare a DTD or entities are refused outright:
that is where XML bombs and external-entity tricks live, and no legitimate XMP needs them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict

__all__ = ["NS", "XmpError", "parse_xmp", "parse_xmp_layers"]

NS = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "dc": "http://purl.org/dc/elements/1.1/",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "photoshop": "http://ns.adobe.com/photoshop/1.0/",
    "tiff": "http://ns.adobe.com/tiff/1.0/",
    "exif": "http://ns.adobe.com/exif/1.0/",
}
_RDF = NS["rdf"]
_MAX_CHARS = 4 * 1024 * 1024
# XMP written by tools nests a few levels (properties in structures in arrays); far deeper
# nesting is only ever an attack on the reader's time
MAX_DEPTH = 64


class XmpError(ValueError):
    """The packet is not well-formed or is refused."""


def parse_xmp(packet: str) -> dict[tuple[str, str], list[str]]:
    """Flatten an XMP packet to ``{(namespace URI, local name): [values]}``."""
    return _flatten(_parse(packet))


def parse_xmp_layers(
    packet: str,
) -> tuple[dict[tuple[str, str], list[str]], dict[tuple[str, str], list[str]]]:
    """(own, every): the properties of the resource the packet describes (the
    ``rdf:Description`` nodes directly under ``rdf:RDF``, XMP Part 1), and ``parse_xmp``'s
    flattening of every property, those of nested structures too (an ingredient in
    ``xmpMM:Pantry`` carries its own DigitalSourceType, which is not the image's). One parse."""
    root = _parse(packet)
    return _top_level(root), _flatten(root)


def _flatten(root: ET.Element) -> dict[tuple[str, str], list[str]]:
    # each property collects the rdf:li items below it: a walk per property, bounded by the
    # nesting depth _parse allows (without the bound, 40,000 nested elements took minutes)
    values: dict[tuple[str, str], list[str]] = defaultdict(list)
    for elem in root.iter():
        for key, value in elem.attrib.items():
            ns, name = _split(key)
            if ns and ns != _RDF and value.strip():
                values[(ns, name)].append(value.strip())
        ns, name = _split(elem.tag)
        if not ns or ns == _RDF or ns == "adobe:ns:meta/":
            continue
        values[(ns, name)].extend(_own_values(elem))
        for li in elem.iter(f"{{{_RDF}}}li"):
            if li.text and li.text.strip():
                values[(ns, name)].append(li.text.strip())
    return dict(values)


def _own_values(prop: ET.Element) -> list[str]:
    """A property element's simple value: ``rdf:resource``, its text, or the ``rdf:value`` of
    a qualified value (``rdf:parseType="Resource"``, or an ``rdf:Description`` inside it)."""
    out = []
    resource = prop.attrib.get(f"{{{_RDF}}}resource")
    if resource:
        out.append(resource.strip())
    if prop.text and prop.text.strip():
        out.append(prop.text.strip())
    holders = [prop, *prop.findall(f"{{{_RDF}}}Description")]
    for holder in holders:
        value = holder.find(f"{{{_RDF}}}value")
        if value is not None and value.text and value.text.strip():
            out.append(value.text.strip())
    return out


def _top_level(root: ET.Element) -> dict[tuple[str, str], list[str]]:
    values: dict[tuple[str, str], list[str]] = defaultdict(list)
    rdfs = [root] if root.tag == f"{{{_RDF}}}RDF" else root.findall(f".//{{{_RDF}}}RDF")[:1]
    for rdf in rdfs:
        for desc in rdf.findall(f"{{{_RDF}}}Description"):
            for key, value in desc.attrib.items():
                ns, name = _split(key)
                if ns and ns != _RDF and value.strip():
                    values[(ns, name)].append(value.strip())
            for prop in desc:
                ns, name = _split(prop.tag)
                if not ns or ns == _RDF:
                    continue
                values[(ns, name)].extend(_own_values(prop))
                for container in prop:  # rdf:Bag / Seq / Alt: its items, not deeper
                    for li in container.findall(f"{{{_RDF}}}li"):
                        if li.text and li.text.strip():
                            values[(ns, name)].append(li.text.strip())
    return dict(values)


def _parse(packet: str) -> ET.Element:
    if len(packet) > _MAX_CHARS:
        raise XmpError(f"XMP packet too large ({len(packet)} characters)")
    head = packet[:4096].upper()
    if "<!DOCTYPE" in head or "<!ENTITY" in packet.upper():
        raise XmpError("XMP packet declares a DTD or entities; refused")
    bodies = _packet_bodies(packet)
    for body in bodies:
        try:
            root = ET.fromstring(body)
        except ET.ParseError as exc:
            error = exc
            continue
        _check_depth(root)
        return root
    raise XmpError(f"malformed XMP: {error}") from None


def _check_depth(root: ET.Element) -> None:
    stack = [(root, 1)]
    while stack:
        elem, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise XmpError(f"XMP nests elements deeper than {MAX_DEPTH} levels; refused")
        stack.extend((child, depth + 1) for child in elem)


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, _, name = tag[1:].partition("}")
        return ns, name
    return "", tag


def _packet_bodies(packet: str) -> list[str]:
    """The XML of the packet, cut two ways, to be parsed in turn: without its processing
    instructions (``<?xpacket ...?>``, an XML declaration) and anything before its first or
    after its last tag, the root under any prefix; and between the conventional
    ``x:xmpmeta`` (or ``rdf:RDF``) tags, for packets with junk around them that holds ``<``
    or ``>``. ``XmpError`` if neither finds an element."""
    kept, pos = [], 0
    while (opened := packet.find("<?", pos)) >= 0:  # one pass: a regex would retry each "<?"
        closed = packet.find("?>", opened + 2)
        if closed < 0:
            break
        kept.append(packet[pos:opened])
        pos = closed + 2
    body = "".join([*kept, packet[pos:]])
    bodies = []
    start, end = body.find("<"), body.rfind(">")
    if start >= 0 and end > start:
        bodies.append(body[start : end + 1])
    for open_tag, close_tag in (("<x:xmpmeta", "</x:xmpmeta>"), ("<rdf:RDF", "</rdf:RDF>")):
        first, last = packet.find(open_tag), packet.rfind(close_tag)
        if 0 <= first < last:
            marked = packet[first : last + len(close_tag)]
            if marked not in bodies:
                bodies.append(marked)
            break
    if not bodies:
        raise XmpError("no XMP root element found")
    return bodies
