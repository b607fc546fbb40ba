"""What every HTTP handler shares: the JSON error, bounded body readers, query flags.

Handlers raise ``HttpError(status, reason)``; the middleware in ``serving.app`` turns it into
``{"error": reason}`` with that status. Bodies are read with a deadline for the whole body and
a byte limit counted as it streams, however the client frames it. A compressed body (any
``Content-Encoding`` but ``identity``) is refused with 415 before it is read: aiohttp would
inflate it ahead of the byte limit, so a small gzip bomb would cost the server its memory,
and images are compressed already. The KServe infer endpoint alone takes ``gzip`` and
``deflate`` (tritonclient's ``request_compression_algorithm``, which Triton accepts): read
compressed and inflated here, in steps, stopping at the byte limit (413).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage, ContentLengthError
from aiohttp.web_protocol import RequestPayloadError

from detector.methods.base import json_safe

__all__ = ["HttpError", "Multipart", "flag", "json_response", "read_body", "read_multipart"]

_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


class HttpError(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


def json_response(
    status: int, payload: dict, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON body that every parser reads: a non-finite number (Python would write a bare
    ``NaN``, which JSON does not have) goes out as null, as the KServe responses write it."""
    try:
        body = json.dumps(payload, allow_nan=False)
    except ValueError:
        body = json.dumps(json_safe(payload), allow_nan=False)
    return web.Response(
        status=status,
        body=body.encode(),
        content_type="application/json",
        headers=headers,
    )


def flag(request: web.Request, name: str, default: bool = False) -> bool:
    """A true/false query parameter (1/0, true/false, yes/no); anything else is a 400."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw.lower() not in _FLAGS:
        raise HttpError(400, f"{name} must be true or false, got {raw!r}")
    return _FLAGS[raw.lower()]


INFLATED = ("gzip", "deflate")  # the codings read_body(inflate=LIMIT) undoes


def _uncompressed(request: web.Request, accepted: tuple[str, ...] = ()) -> str | None:
    """The body's one coding among ``accepted`` (None: identity), else 415 before any of it
    is read (and inflated: see the module's docstring)."""
    given = request.headers.get("Content-Encoding", "")
    codings = [c.strip().lower() for c in given.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in accepted:
        return codings[0]
    also = f" or as {' / '.join(accepted)}" if accepted else ""
    raise HttpError(
        415,
        f"Content-Encoding {given.strip()} is not accepted: send the body uncompressed{also}",
        {"Accept-Encoding": ", ".join(accepted) or "identity"},
    )


def _inflate(body: bytes, coding: str, limit: int) -> bytes:
    """``body`` inflated, never past ``limit`` bytes (413): a gzip bomb stops there."""
    import zlib

    wbits = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
    if coding == "deflate" and body[:1] and (body[0] & 0x0F) != 8:  # raw deflate, no header
        wbits = -zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise HttpError(400, f"malformed {coding} body: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise HttpError(413, f"request body inflates past {limit} bytes")
    if not inflater.eof:
        raise HttpError(400, f"malformed {coding} body: it ends before its stream does")
    return out


async def read_body(
    request: web.Request,
    timeout: float = 30.0,
    limit: int | None = None,
    inflate: int | None = None,
) -> bytes:
    """The whole body, or a 4xx when the client sends less than it declared, stalls, sends
    more than ``limit`` bytes (413; the app-wide body limit applies in any case) or sends it
    compressed (415). ``inflate``: a gzip or deflate body is taken and inflated up to that
    many bytes."""
    coding = _uncompressed(request, INFLATED if inflate is not None else ())
    if limit is not None and (request.content_length or 0) > limit:
        raise HttpError(413, f"request body of {request.content_length} bytes exceeds {limit}")
    try:
        body = await asyncio.wait_for(request.read(), timeout)
    except TimeoutError:
        raise HttpError(408, f"request body not received within {timeout:.0f} s") from None
    except (BadHttpMessage, ContentLengthError) as exc:
        raise HttpError(
            400, f"malformed request body: {exc.message if hasattr(exc, 'message') else exc}"
        ) from None
    except RequestPayloadError as exc:  # a transfer coding aiohttp could not undo
        raise HttpError(400, f"malformed request body: {exc}") from None
    except ConnectionResetError:
        raise HttpError(400, "connection closed before the body was complete") from None
    if limit is not None and len(body) > limit:
        raise HttpError(413, f"request body of {len(body)} bytes exceeds {limit}")
    if coding is not None and inflate is not None:  # zlib lets go of the GIL: off the loop
        return await asyncio.to_thread(_inflate, body, coding, inflate)
    return body


@dataclass
class Multipart:
    files: list[tuple[str, bytes]] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


_FILE_FIELDS = ("file", "files", "image")
_MAX_FIELD_BYTES = 64 * 1024
_MAX_FIELDS = 32  # text fields beside the files (the API reads a handful)


async def read_multipart(
    request: web.Request, max_files: int, max_bytes: int, timeout: float
) -> Multipart:
    """The files and text fields of a multipart body, read as they stream in: the whole body is
    bounded by ``max_bytes`` (413), the file count by ``max_files`` (400), a text field by 64
    KiB (413), the whole body must arrive within ``timeout`` (408), uncompressed (415)."""
    _uncompressed(request)
    total = 0
    out = Multipart()
    deadline = asyncio.get_running_loop().time() + timeout

    async def timed(coro):  # the whole body within the timeout, not each read
        try:
            return await asyncio.wait_for(coro, deadline - asyncio.get_running_loop().time())
        except TimeoutError:
            raise HttpError(408, f"request body not received within {timeout:.0f} s") from None

    try:
        reader = await request.multipart()
        parts = 0
        while (part := await timed(reader.next())) is not None:
            if not isinstance(
                part, BodyPartReader
            ):  # a multipart/mixed part (deprecated, RFC 7578)
                raise HttpError(
                    400, "nested multipart parts are not read; send each file as a part"
                )
            is_file = part.filename is not None or part.name in _FILE_FIELDS
            if is_file and len(out.files) >= max_files:
                raise HttpError(400, f"too many files in one request (more than {max_files})")
            parts += 1
            if parts > max_files + _MAX_FIELDS:  # 100,000 one-byte fields took 20 s of CPU
                raise HttpError(
                    400, f"too many parts in one request (more than {max_files + _MAX_FIELDS})"
                )
            chunks = []
            size = 0
            while chunk := await timed(part.read_chunk(1 << 16)):
                total += len(chunk)
                size += len(chunk)
                if total > max_bytes:
                    raise HttpError(413, f"request body exceeds {max_bytes} bytes")
                if not is_file and size > _MAX_FIELD_BYTES:
                    raise HttpError(
                        413, f"form field {part.name!r} exceeds {_MAX_FIELD_BYTES} bytes"
                    )
                chunks.append(chunk)
            if is_file:
                out.files.append(
                    (part.filename or part.name or f"part{len(out.files)}", b"".join(chunks))
                )
            elif part.name:
                try:
                    out.fields[part.name] = b"".join(chunks).decode("utf-8")
                except UnicodeDecodeError:
                    raise HttpError(400, f"form field {part.name!r} is not UTF-8 text") from None
    except (BadHttpMessage, ContentLengthError, RequestPayloadError, ValueError) as exc:
        raise HttpError(400, f"malformed multipart body: {exc}") from None
    except ConnectionResetError:
        raise HttpError(400, "connection closed before the body was complete") from None
    return out


async def read_json_object(request: web.Request, timeout: float, limit: int = 64 * 1024) -> dict:
    """A small JSON object body (400 if it is not one, 413 past ``limit`` bytes)."""
    body = await read_body(request, timeout, limit)
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise HttpError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise HttpError(400, "body must be a JSON object")
    return value
