"""PDFs written byte by byte for the tests of hostile input: a correct skeleton (catalog, page tree, pages, a font,
Flate content streams, a cross-reference table) around whatever a hostile file puts in it.

    assemble(objects)     a PDF of the given object bodies (numbered from 1; the first is the catalog)
    one_page(content)     a one-page PDF drawing `content` (a content stream's operators)
    many_pages(n)         n pages sharing one content stream
    nested_arrays(depth)  a page whose /Contents array nests `depth` arrays deep
    nested_dicts(depth)   a page whose resources hold a dictionary nested `depth` deep
    looped_page_tree()    a page tree whose /Kids holds itself
    operator_flood(p, n)  p pages of n cheap operators each: slow to interpret, little memory (a few hundred KB)
    decompression_bomb(mb) a page whose content stream inflates to `mb` MB (a zlib bomb of about mb KB)
"""

from __future__ import annotations

import zlib

FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
TEXT = b"BT /F1 12 Tf 72 700 Td (Total net sales 81,797) Tj ET\n"


def assemble(objects: list[bytes], root: int = 1) -> bytes:
    """A PDF of `objects` (numbered from 1, the catalog `root`) with a correct cross-reference table."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, root, xref)
    return bytes(out)


def stream(data: bytes) -> bytes:
    return packed_stream(zlib.compress(data, 9))


def packed_stream(packed: bytes) -> bytes:
    return b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed + b"\nendstream"


def _page(resources: bytes = b"", contents: bytes = b"5 0 R") -> bytes:
    return (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> "
            + resources + b" >> /Contents " + contents + b" >>")


def one_page(content: bytes, *, page: bytes | None = None, packed: bytes | None = None) -> bytes:
    return assemble([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                     page or _page(), FONT, packed_stream(packed) if packed is not None else stream(content)])


def many_pages(n: int, content: bytes = TEXT) -> bytes:
    # 1 catalog, 2 page tree, 3 font, 4 the content every page shares, 5… the pages
    kids = b" ".join(b"%d 0 R" % (5 + i) for i in range(n))
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> " \
           b"/Contents 4 0 R >>"
    return assemble([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % n,
                     FONT, stream(content)] + [page] * n)


def nested_arrays(depth: int) -> bytes:
    return one_page(TEXT, page=_page(contents=b"[5 0 R " + b"[" * depth + b"]" * depth + b"]"))


def nested_dicts(depth: int) -> bytes:
    return one_page(TEXT, page=_page(resources=b"/X " + b"<< /A " * depth + b"1" + b" >>" * depth))


def looped_page_tree() -> bytes:
    return assemble([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [2 0 R 3 0 R] /Count 2 >>",
                     _page(), FONT, stream(TEXT)])


def operator_flood(pages: int, operators: int) -> bytes:
    """`pages` pages sharing one content stream of `operators` cheap operators: minutes to interpret on any machine,
    a few MB at a time, a file of a few hundred KB."""
    return many_pages(pages, TEXT + b"q Q " * operators)


def decompression_bomb(mb: int) -> bytes:
    packer, block = zlib.compressobj(9), b" " * (1 << 20)  # compressed a MB at a time: never held inflated
    packed = packer.compress(TEXT) + b"".join(packer.compress(block) for _ in range(mb)) + packer.flush()
    return one_page(b"", packed=packed)
