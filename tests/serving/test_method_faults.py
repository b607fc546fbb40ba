"""A method that cannot start or cannot say whether it can: how the server reports it."""

from __future__ import annotations

import json

import pytest

from detector.methods import Kind, Method, MethodUnavailable, register_method
from serving.service import Service
from tests.serving.test_server import request
from training import metadata_writers as P

pytestmark = pytest.mark.integration


def _method(**attrs):
    def score(self, images):
        return [self.abstain() for _ in images]

    return type("Faulty", (Method,), {"kind": Kind.METADATA, "score": score, **attrs})


def _boom(self, **options):
    raise RuntimeError("init exploded")


def _explode(cls, **options):
    raise RuntimeError("availability exploded")


def test_a_method_that_cannot_start_is_answered_as_an_unavailable_one(server, method_registry):
    """A request naming it is answered as one naming an unavailable method (400, with the
    reason), not with a stack trace; the other methods still answer."""
    register_method("broken_init")(_method(__init__=_boom))
    register_method("fragile")(_method(availability=classmethod(_explode)))
    png = P.encode(P.synthetic_scene(1, 64, 64), "PNG")
    for name, reason in (
        ("broken_init", "method 'broken_init' failed to start: RuntimeError: init exploded"),
        ("fragile", "method 'fragile' is unavailable: availability check failed: RuntimeError"),
    ):
        status, _, body = request(server.url, f"/v1/score?methods=c2pa,{name}", png)
        assert status == 400 and reason in json.loads(body)["error"]
    status, _, body = request(server.url, "/v1/score?methods=c2pa", png)
    assert status == 200 and json.loads(body)["verdict"]["label"] == "uncertain"


def test_startup_names_a_default_method_that_cannot_start(service_config, method_registry):
    """serve stopped with a traceback; a ValueError is what it reports as a bad setting
    (`synthdetect: <reason>`, exit 2). A method whose availability check raises is left out
    of the default set: the server starts."""
    register_method("fragile")(_method(availability=classmethod(_explode)))
    service = Service(service_config)
    assert "fragile" not in service.default_methods
    service.close()
    register_method("broken_init")(_method(__init__=_boom))
    with pytest.raises(ValueError, match="'broken_init' failed to start") as caught:
        Service(service_config)
    assert isinstance(caught.value, MethodUnavailable)
