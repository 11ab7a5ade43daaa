"""Uploads: a multipart body's files streamed to disk, checked as they arrive, kept only when acceptable.

Each `files` part is written to a hidden temporary file beside its destination while its bytes are counted and
its content sniffed; it is rejected, and its temporary file removed, as soon as it breaks a rule:

- a name that sanitises to nothing (`safe_name`: the base name only, no control characters, no leading dot, no
  `..`, no Windows device name, at most 200 characters) or that appears twice in the upload;
- an archive (by extension, or by its magic bytes: zip, gzip, 7z, rar, bzip2, xz, zstd, tar);
- a type the loader does not read (`supported`: extension → kind), or content that is not of that type: a PDF
  must start with `%PDF-`, text (TXT, HTML, Markdown) must be UTF-8 without NUL bytes;
- more than `max_bytes`, or nothing at all.

Rejected files do not stop the others. More than `max_files` files, a body past what `max_files` files of
`max_bytes` can be, or a malformed body fail the whole request. Accepted files replace their destination with
one rename (`Received.keep`).
"""

from __future__ import annotations

import codecs
import os
import re
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from .errors import BadRequest, InvalidCollectionName, UploadRejected, UploadTooLarge

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FIELD = "files"
MAX_NAME = 200
_COLLECTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ARCHIVE_SUFFIXES = {".zip", ".tar", ".gz", ".tgz", ".bz2", ".tbz", ".tbz2", ".xz", ".txz", ".7z", ".rar", ".zst",
                     ".lz", ".lzma", ".z", ".cab", ".jar", ".war", ".iso", ".arj", ".lzh"}
_ARCHIVE_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08", b"\x1f\x8b", b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07",
                  b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")
ARCHIVE = "archives are not accepted; unpack and upload the files"
_DEVICE = re.compile(r"(?:CON|PRN|AUX|NUL|COM\d|LPT\d)(?:\..*)?", re.I)  # Windows device names, any extension
_SNIFF = 512  # bytes read before the content is judged (tar's magic sits at 257)
_HEADER_SLACK = 1 << 20  # multipart headers and boundaries beside the files' bytes


def check_collection(name: str) -> str:
    """`name` if it can name a collection: 1-64 letters, digits, `_`, `.`, `-`, not starting with `.`/`_`/`-`,
    without `--` (which marks a learned embedder's copy of a collection)."""
    if not _COLLECTION.fullmatch(name) or "--" in name:
        raise InvalidCollectionName(
            f"invalid collection name {name[:80]!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit, without '--'"
        )
    return name


def safe_name(raw: str) -> str:
    """A file name that is safe to store: the base name of `raw` without control characters, leading dots or
    `..`, no trailing dot or space, no Windows device name (`CON.pdf` becomes `_CON.pdf`), NFC-normalised, at
    most MAX_NAME characters (the extension kept). Empty when nothing is left."""
    name = re.split(r"[/\\]", unicodedata.normalize("NFC", raw))[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")  # control, format, unassigned
    name = unicodedata.normalize("NFC", name)  # a removed character may have kept two from composing
    name = re.sub(r"[<>:\"|?*]", "_", name)
    name = re.sub(r"\.{2,}", ".", name).strip().strip(". ")
    if _DEVICE.fullmatch(name):
        name = f"_{name}"
    stem, dot, suffix = name.rpartition(".")
    if not dot or len(suffix) > 16:
        stem, suffix = name, ""
    while stem and (len(name) > MAX_NAME or len(name.encode()) > 240):
        stem = stem[:-1].rstrip(". ")
        name = f"{stem}.{suffix}" if suffix else stem
    return name if stem else ""


def is_archive_name(name: str) -> bool:
    return any(s.lower() in _ARCHIVE_SUFFIXES for s in Path(name).suffixes)


def sniff(head: bytes, kind: str) -> str | None:
    """Why content starting with `head` is not a file of `kind` ("pdf", "html", "text", "markdown"), or None."""
    if head.startswith(_ARCHIVE_MAGIC) or head[257:262] == b"ustar":
        return ARCHIVE
    if kind == "pdf" and not head.startswith(b"%PDF-"):
        return "not a PDF: it does not start with %PDF-"
    return None


@dataclass
class Received:
    """One file of an upload: its sanitised name and, while acceptable, the temporary file holding it."""

    name: str
    kind: str = ""
    error: str | None = None
    size: int = 0
    temp: Path | None = None
    out: IO[bytes] | None = field(default=None, repr=False)
    head: bytearray = field(default_factory=bytearray, repr=False)  # the first bytes, judged before any is kept
    text: codecs.IncrementalDecoder | None = field(default=None, repr=False)  # UTF-8 check of text types
    ended: bool = False

    def reject(self, reason: str) -> None:
        if self.error is None:
            self.error = reason
        self.discard()

    def discard(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)
            self.temp = None

    def keep(self, destination: Path) -> Path:
        """Move the file to `destination`, replacing what was there."""
        assert self.temp is not None and self.error is None
        os.replace(self.temp, destination)
        self.temp = None
        return destination


class _Receiver:
    """python-multipart callbacks that stream `files` parts to temporary files in `folder`."""

    def __init__(self, folder: Path, supported: Mapping[str, str], max_bytes: int, max_files: int) -> None:
        self.folder, self.supported, self.max_bytes, self.max_files = folder, supported, max_bytes, max_files
        self.files: list[Received] = []
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._part: Received | None = None

    def callbacks(self) -> MultipartCallbacks:
        return {"on_part_begin": self._begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._data, "on_part_end": self._end}

    def _begin(self) -> None:
        self._headers, self._part = {}, None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if options.get(b"name") != FIELD.encode() or b"filename" not in options:
            return  # another form field: its bytes are counted in the body, nothing is kept
        if len(self.files) == self.max_files:
            raise UploadRejected(f"too many files: at most {self.max_files} per upload (UPLOAD_MAX_FILES)")
        raw = options[b"filename"].decode("utf-8", "replace")
        part = self._part = Received(safe_name(raw) or raw[:MAX_NAME])
        self.files.append(part)
        suffix = Path(part.name).suffix.lower()
        if not safe_name(raw):
            part.reject("no usable file name")
        elif any(f.name == part.name for f in self.files[:-1]):
            part.reject("the same file name appears twice in this upload")
        elif is_archive_name(part.name):
            part.reject(ARCHIVE)
        elif suffix not in self.supported:
            part.reject(f"unsupported file type {suffix or '(none)'!r}; supported: {', '.join(sorted(self.supported))}")
        else:
            part.kind = self.supported[suffix]
            part.temp = self.folder / f".upload-{uuid.uuid4().hex}.part"
            part.out = part.temp.open("xb")
            if part.kind != "pdf":
                part.text = codecs.getincrementaldecoder("utf-8")()

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part is None or part.error is not None:
            return
        chunk = data[start:end]
        part.size += len(chunk)
        if part.size > self.max_bytes:
            part.reject(f"larger than the {self.max_bytes / 1e6:g} MB limit (UPLOAD_MAX_MB)")
            return
        if len(part.head) < _SNIFF:  # held back until the start of the file can be judged
            part.head += chunk
            if len(part.head) < _SNIFF:
                return
            chunk = bytes(part.head)
            if reason := sniff(chunk, part.kind):
                part.reject(reason)
                return
        self._write(part, chunk)

    def _end(self) -> None:
        part, self._part = self._part, None
        if part is None or part.error is not None:
            return
        part.ended = True
        if part.size == 0:
            part.reject("empty file")
            return
        if len(part.head) < _SNIFF:  # a small file: judged and written now
            if reason := sniff(bytes(part.head), part.kind):
                part.reject(reason)
                return
            self._write(part, bytes(part.head))
        if part.error is None and part.text is not None:
            self._check_text(part, b"", final=True)
        if part.out is not None:
            part.out.close()
            part.out = None

    def _write(self, part: Received, chunk: bytes) -> None:
        if part.text is not None and not self._check_text(part, chunk, final=False):
            return
        assert part.out is not None
        part.out.write(chunk)

    @staticmethod
    def _check_text(part: Received, chunk: bytes, *, final: bool) -> bool:
        assert part.text is not None
        if b"\x00" in chunk:
            part.reject("binary content in a text file (NUL bytes)")
            return False
        try:
            part.text.decode(chunk, final)
        except UnicodeDecodeError:
            part.reject("not UTF-8 text; save it as UTF-8")
            return False
        return True


async def receive(request: Request, folder: Path, supported: Mapping[str, str], *, max_bytes: int,
                  max_files: int) -> list[Received]:
    """The files of a multipart/form-data request's `files` parts, streamed into `folder`: accepted ones in a
    temporary file there (`Received.keep` moves it into place), rejected ones with `error`. On any failure
    every temporary file is removed."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise BadRequest(f"send the files as multipart/form-data, one `{FIELD}` part per file")
    limit = max_files * max_bytes + _HEADER_SLACK
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge(f"the upload is {int(declared) / 1e6:.0f} MB; at most {max_files} files of "
                             f"{max_bytes / 1e6:g} MB each are accepted (UPLOAD_MAX_FILES, UPLOAD_MAX_MB)")
    folder.mkdir(parents=True, exist_ok=True)
    receiver = _Receiver(folder, supported, max_bytes, max_files)
    parser = MultipartParser(boundary, receiver.callbacks())
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise UploadTooLarge(f"the upload is larger than {max_files} files of {max_bytes / 1e6:g} MB "
                                     "(UPLOAD_MAX_FILES, UPLOAD_MAX_MB)")
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        _discard(receiver.files)
        raise BadRequest(f"malformed multipart body: {exc}") from None
    except BaseException:  # a bad request, a client gone, a cancelled task: nothing is kept
        _discard(receiver.files)
        raise
    for part in receiver.files:
        if part.error is None and not part.ended:
            part.reject("the upload was cut off before this file ended")
    if not receiver.files:
        raise BadRequest(f"no files: send multipart/form-data with one `{FIELD}` part per file")
    return receiver.files


def _discard(files: list[Received]) -> None:
    for part in files:
        part.discard()
