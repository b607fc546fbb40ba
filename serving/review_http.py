"""HTTP routes of the moderation loop: users' reports, the review queue, the review page.

- ``POST /v1/reports``: a user reports an image: JSON ``{"sha256", "reason", "reporter"}`` for
  an image the server kept, multipart with the image and ``reason``/``reporter`` fields, or the
  raw image with ``?reason=...&reporter=...``. Any valid key may report.
- ``GET /v1/reviews?status=open|decided|all&limit=&offset=``, ``GET /v1/reviews/{id}``
  (verdict, reports, audit trail, known-image matches), ``GET /v1/reviews/{id}/image``,
  ``GET /v1/reviews/{id}/heatmap`` (422 for an image too small to have one; either is a 422
  when it must decode a kept file that no longer decodes), ``POST /v1/reviews/{id}`` with
  JSON ``{"decision": "generated|camera|skip", "reviewer", "note"}``: reviewers only (a
  reviewer key when the server has keys).
- ``GET /review``: the review page (plain HTML and one script, served from ``serving/static``).

With no review database (``--review-db``) the queue's routes answer 404 saying so; the page
still scores uploads by hand.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web

from detector.image import ImageError
from detector.memory import KnownImageError
from serving.http import (
    HttpError,
    json_response,
    read_body,
    read_json_object,
    read_multipart,
)
from serving.review import ReviewError, ReviewQueue

if TYPE_CHECKING:
    from serving.service import Service

__all__ = ["ReviewRoutes"]

_PAGE_FILES = {
    "": ("review.html", "text/html"),
    "review.js": ("review.js", "text/javascript"),
    "review.css": ("review.css", "text/css"),
}
# Formats a browser shows as they are; the others are sent as PNG renditions to the page.
_BROWSER_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
                  "GIF": "image/gif", "BMP": "image/bmp"}  # fmt: skip
_MAX_LIST = 500
_MAX_OFFSET = 2**63 - 1  # SQLite integers are signed 64-bit


class ReviewRoutes:
    def __init__(
        self, service: Service, body_timeout_s: float, max_body_bytes: int, caller_key
    ) -> None:
        self.s = service
        self.body_timeout_s = body_timeout_s
        self.max_body_bytes = max_body_bytes
        self.caller_key = caller_key  # request[caller_key]: the serving.guard.Caller

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/v1/reports", self.report)
        app.router.add_get("/v1/reviews", self.list)
        app.router.add_get("/v1/reviews/{id}", self.get)
        app.router.add_post("/v1/reviews/{id}", self.decide)
        app.router.add_get("/v1/reviews/{id}/image", self.image)
        app.router.add_get("/v1/reviews/{id}/heatmap", self.heatmap)
        app.router.add_get("/review", self.page)
        app.router.add_get("/review/{file}", self.page)

    # --- helpers ---------------------------------------------------------------------------

    def _queue(self) -> ReviewQueue:
        if self.s.reviews is None:
            raise HttpError(404, "the review queue is off: start the server with --review-db PATH")
        return self.s.reviews

    def _caller(self, request: web.Request):
        return request.get(self.caller_key)

    def _actor(self, request: web.Request) -> str:
        caller = self._caller(request)
        return caller.key if caller is not None else "anonymous"

    def _reviewer_only(self, request: web.Request) -> ReviewQueue:
        queue = self._queue()
        caller = self._caller(request)
        if caller is not None and caller.role != "reviewer":
            raise HttpError(403, "this API key may not review: reviewers need a reviewer key")
        return queue

    @staticmethod
    def _id(request: web.Request) -> int:
        raw = request.match_info["id"]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:  # "²" is a digit to isdigit
            raise HttpError(400, f"review id must be a positive integer, got {raw!r}")
        return int(raw)

    async def _call(self, fn, *args):
        try:
            return await self.s.run(fn, *args)
        except ReviewError as exc:
            raise HttpError(exc.status, str(exc)) from None
        except KnownImageError as exc:
            raise HttpError(400, str(exc)) from None

    # --- reports ---------------------------------------------------------------------------

    async def report(self, request: web.Request) -> web.Response:
        self._queue()
        ctype = request.content_type
        blob = sha = filename = None
        if ctype == "application/json":
            fields = await read_json_object(request, self.body_timeout_s)
            sha = fields.get("sha256")
            if not isinstance(sha, str):
                raise HttpError(400, "a JSON report needs sha256 (of an image the server kept)")
        elif ctype.startswith("multipart/"):
            form = await read_multipart(request, 1, self.max_body_bytes, self.body_timeout_s)
            fields = dict(form.fields)
            if form.files:
                filename, blob = form.files[0]
            elif "sha256" in fields:
                sha = fields["sha256"]
            else:
                raise HttpError(400, "a multipart report needs the image (a file part) or sha256")
        else:
            blob = await read_body(request, self.body_timeout_s)
            if not blob:
                raise HttpError(400, "empty body: send the image, or JSON with its sha256")
            fields = dict(request.query)
        for name in ("reason", "reporter"):
            if not isinstance(fields.get(name), str) or not fields[name].strip():
                raise HttpError(400, f"a report needs {name} (a non-empty string)")
        item_id, res = await self._call(
            self.s.report, fields["reporter"], fields["reason"], self._actor(request), blob,
            sha, filename,
        )  # fmt: skip
        if isinstance(res, ImageError):
            raise HttpError(422, str(res))
        out: dict = {"review_id": item_id}
        if res is not None:
            out["verdict"] = res.to_dict()
        return json_response(201, out)

    # --- the queue -------------------------------------------------------------------------

    async def list(self, request: web.Request) -> web.Response:
        queue = self._reviewer_only(request)
        status = request.query.get("status", "open")
        try:
            limit = int(request.query.get("limit", "50"))
            offset = int(request.query.get("offset", "0"))
        except ValueError:
            raise HttpError(400, "limit and offset must be integers") from None
        if not 1 <= limit <= _MAX_LIST or not 0 <= offset <= _MAX_OFFSET:
            raise HttpError(
                400, f"limit must be within 1..{_MAX_LIST} and offset within 0..{_MAX_OFFSET}"
            )
        after = request.query.get("after")
        return json_response(200, await self._call(queue.items, status, limit, offset, after))

    async def get(self, request: web.Request) -> web.Response:
        queue = self._reviewer_only(request)
        return json_response(200, await self._call(queue.get, self._id(request)))

    async def decide(self, request: web.Request) -> web.Response:
        queue = self._reviewer_only(request)
        item_id = self._id(request)
        body = await read_json_object(request, self.body_timeout_s)
        unknown = set(body) - {"decision", "reviewer", "note"}
        if unknown:
            raise HttpError(400, f"unknown fields {sorted(unknown)}: send decision, reviewer, note")
        item = await self._call(
            queue.decide, item_id, body.get("decision"), body.get("reviewer"),
            body.get("note", ""), self._actor(request),
        )  # fmt: skip
        return json_response(200, item)

    async def _decoded(self, item_id: int, fn, *args):
        """``fn`` over the item's kept file, which decoded when it was queued: a file that no
        longer does (damaged on disk, or a decoder's limits since lowered) is a 422 saying so,
        not a server error."""
        try:
            return await self._call(fn, *args)
        except ImageError as exc:
            raise HttpError(
                422, f"the kept image of review {item_id} no longer decodes: {exc}"
            ) from None

    async def image(self, request: web.Request) -> web.Response:
        queue = self._reviewer_only(request)
        item_id = self._id(request)
        data, fmt = await self._call(queue.image, item_id)
        if fmt in _BROWSER_TYPES:
            return web.Response(body=data, content_type=_BROWSER_TYPES[fmt])
        png = await self._decoded(item_id, _png_rendition, data, self.s.config.limits)
        return web.Response(body=png, content_type="image/png")

    async def heatmap(self, request: web.Request) -> web.Response:
        queue = self._reviewer_only(request)
        item_id = self._id(request)
        data, _ = await self._call(queue.image, item_id)
        heat = await self._decoded(item_id, self.s.heatmap, data, False)
        if "error" in heat:  # the image is there but gives no heatmap (too small): a 422
            raise HttpError(422, heat["error"])
        return json_response(200, heat)

    # --- the page --------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        name = request.match_info.get("file", "")
        if name not in _PAGE_FILES:
            raise HttpError(404, f"no such file on the review page: {name!r}")
        file, ctype = _PAGE_FILES[name]
        return web.Response(
            body=_page_file(file),
            content_type=ctype,
            charset="utf-8",
            headers={
                "Cache-Control": "no-cache",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:",
                "X-Content-Type-Options": "nosniff",
            },
        )


@functools.cache
def _page_file(name: str) -> bytes:
    """A file of the review page, read once per process (they ship with the package)."""
    return resources.files("serving").joinpath("static", name).read_bytes()


def _png_rendition(data: bytes, limits) -> bytes:
    import io

    from PIL import Image

    from detector.image import decode

    buf = io.BytesIO()
    Image.fromarray(decode(data, limits).pixels).save(buf, format="PNG")
    return buf.getvalue()
