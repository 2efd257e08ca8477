"""JPEG and WebP: the record as XMP (Pillow writes the packet: APP1 in a JPEG, the XMP
chunk in a WebP), beside the IPTC digital source type of AI-made media."""

from __future__ import annotations

from xml.sax.saxutils import escape

from genserve.server.provenance.record import RECORD_KEY, Record

NAMESPACE = "https://github.com/genserve/genserve/ns/provenance/1.0/"
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


def xmp_packet(record: Record) -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about=""'
        f' xmlns:{RECORD_KEY}="{NAMESPACE}"'
        ' xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
        ' xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/">'
        f"<xmp:CreatorTool>{escape(record.software)}</xmp:CreatorTool>"
        f"<Iptc4xmpExt:DigitalSourceType>{DIGITAL_SOURCE_TYPE}</Iptc4xmpExt:DigitalSourceType>"
        f"<{RECORD_KEY}:record>{escape(record.json)}</{RECORD_KEY}:record>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    ).encode()
