"""``POST /v1/score``: every method's verdict on uploaded images, over HTTP.

The body is one image file, or multipart/form-data with up to ``4 x max_batch_size`` files.
Query: ``methods=a,b`` (a subset of the registered methods), ``include_prompt=true`` (keep
generator prompts in the evidence), ``heatmap=true`` (per-tile probabilities and an overlay
PNG), ``review=true`` (queue the verdict for a reviewer; needs ``--review-db``). Uncertain
verdicts are queued for review whenever the queue is on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from detector.fusion import Verdict
from detector.image import ImageError
from detector.registry import RegistryError
from serving.http import HttpError, flag, json_response, read_body, read_multipart
from serving.service import gather_or_cancel

if TYPE_CHECKING:
    from serving.service import Service

__all__ = ["ScoreRoutes"]


class ScoreRoutes:
    def __init__(self, service: Service, body_timeout_s: float, max_body_bytes: int, actor) -> None:
        self.s = service
        self.body_timeout_s = body_timeout_s
        self.max_body_bytes = max_body_bytes
        self.actor = actor  # request -> the caller's key label

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/v1/score", self.score)

    def _detector(self, request: web.Request):
        methods = request.query.get("methods")
        include_prompt = flag(request, "include_prompt")
        if methods is None and not include_prompt:
            return self.s.detector
        names = self.s.default_methods
        if methods is not None:
            names = [m.strip() for m in methods.split(",") if m.strip()]
            if not names:
                raise HttpError(400, "methods is empty: name at least one method")
        try:
            return self.s.make_detector(names, include_prompt)
        except (RegistryError, ValueError, RuntimeError) as exc:
            raise HttpError(400, str(exc)) from None

    async def score(self, request: web.Request) -> web.Response:
        detector = self._detector(request)
        heatmap = flag(request, "heatmap")
        if heatmap and "model" not in detector.method_names:
            raise HttpError(400, "heatmap=true needs the model method (it maps the model's tiles)")
        review = flag(request, "review")
        if review and self.s.reviews is None:
            raise HttpError(
                400, "review=true needs the review queue: start the server with --review-db PATH"
            )
        multipart = request.content_type.startswith("multipart/")
        if multipart:
            files = await self.multipart_files(request)
        else:
            body = await read_body(request, self.body_timeout_s)
            if not body:
                raise HttpError(
                    400, "empty body: send an image file, or multipart/form-data with files"
                )
            files = [(None, body)]
        results = await gather_or_cancel(*(self.s.score([data], detector) for _, data in files))
        out = []
        for (name, data), (res,) in zip(files, results, strict=True):
            if not multipart and isinstance(res, ImageError):
                raise HttpError(422, str(res))
            rec = _record(name, res)
            if isinstance(res, Verdict):
                if self.s.reviews is not None and (review or res.label == "uncertain"):
                    reason = "requested" if review else "uncertain"
                    rec["review_id"] = await self.s.run(
                        self.s.queue_review, data, res, reason, self.actor(request), name
                    )
                if heatmap:
                    rec["heatmap"] = await self.s.run(self.s.heatmap, data)
            out.append(rec)
        return json_response(200, {"results": out} if multipart else out[0])

    async def multipart_files(self, request: web.Request) -> list[tuple[str, bytes]]:
        form = await read_multipart(
            request,
            self.s.config.batcher.max_batch_size * 4,
            self.max_body_bytes,
            self.body_timeout_s,
        )
        if not form.files:
            raise HttpError(400, "multipart request has no files")
        return form.files


def _record(filename: str | None, res: Verdict | ImageError) -> dict:
    rec: dict = {} if filename is None else {"filename": filename}
    if isinstance(res, ImageError):
        rec["error"] = str(res)
    else:
        rec["verdict"] = res.to_dict()
    return rec
