"""The method registry contract, checked for every registered method."""

from __future__ import annotations

import json

import pytest

from detector.image import decode
from detector.methods import (
    METHODS,
    Kind,
    MethodResult,
    create_method,
    method_names,
    register_method,
)
from detector.methods.base import PerImageMethod
from detector.preprocess import MIN_SIDE
from detector.registry import Registry, RegistryError
from training import metadata_writers as P

pytestmark = pytest.mark.unit


def test_duplicate_and_invalid_names_are_errors():
    reg: Registry[int] = Registry("thing")
    reg.register("a")(1)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("a")(2)
    with pytest.raises(RegistryError, match="invalid"):
        reg.register("Bad-Name")
    with pytest.raises(RegistryError, match=r"unknown thing 'b' \(known: a\)"):
        reg.get("b")


def test_a_method_module_is_found_by_being_in_the_package(tmp_path, monkeypatch):
    """The README's "one file" promise: the package imported a fixed list of modules, so a
    new module that registered itself was never imported (and its method never ran)."""
    import sys

    package = tmp_path / "plugins_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from detector.registry import Registry, import_plugins\n"
        "FOUND = Registry('thing')\n"
        "import_plugins(__name__, __path__, skip=('base',))\n"
    )
    (package / "base.py").write_text("raise AssertionError('skipped modules are not imported')\n")
    for name in ("zeta", "alpha"):
        (package / f"{name}.py").write_text(
            f"from plugins_pkg import FOUND\nFOUND.register('{name}')(object)\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    import plugins_pkg

    try:
        assert plugins_pkg.FOUND.names() == ["alpha", "zeta"]
    finally:
        for mod in [m for m in sys.modules if m.startswith("plugins_pkg")]:
            del sys.modules[mod]


def test_registering_a_builtin_name_again_fails():
    with pytest.raises(RegistryError):

        @register_method("c2pa")
        class Again(PerImageMethod):  # pragma: no cover - never registered
            kind = Kind.METADATA

            def score_one(self, image):
                return self.abstain()


def test_kinds_filter():
    assert set(method_names(Kind.METADATA)) >= {
        "c2pa",
        "iptc_source_type",
        "generator_params",
        "invisible_watermark",
        "exif_hints",
    }


@pytest.fixture(scope="module")
def batch(scene):
    images = [
        P.encode(scene, "JPEG"),
        P.encode(scene, "PNG", png_text={"parameters": P.a1111_parameters()}),
        P.encode(scene[:40, :30], "GIF"),
        P.encode(scene, "WEBP", xmp=P.iptc_xmp("trainedAlgorithmicMedia")),
    ]
    return [decode(d) for d in images]


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_keeps_the_contract(name, batch, method_options):
    method = create_method(name, **method_options.get(name, {}))
    assert method.name == name and method.kind in Kind
    results = method.score(batch)
    assert len(results) == len(batch)
    for res in results:
        assert isinstance(res, MethodResult) and res.method == name and res.kind == method.kind
        json.dumps(res.to_dict())
    if method.kind == Kind.METADATA:
        assert results[0].abstained, "a plain JPEG without metadata carries no provenance signal"
    elif method.kind == Kind.MEMORY:
        assert all(r.abstained for r in results), "an empty memory matches nothing"
    else:  # pixel methods judge every image of at least MIN_SIDE px, in batch order
        big = [
            r
            for img, r in zip(batch, results, strict=True)
            if min(img.pixels.shape[:2]) >= MIN_SIDE
        ]
        assert len(big) == 3 and all(r.probability is not None for r in big)
        small = results[2]  # the 40x30 GIF: padding would be most of what the method sees
        assert small.abstained
        assert [e.code for e in small.evidence] == [f"{name}.too_small"]
        assert "30x40 px is too small" in small.evidence[0].message
    assert method.score([]) == []


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_is_deterministic(name, batch, method_options):
    method = create_method(name, **method_options.get(name, {}))
    first = [r.to_dict() for r in method.score(batch)]
    second = [r.to_dict() for r in method.score(batch)]
    for a, b in zip(first, second, strict=True):
        a.pop("ms"), b.pop("ms")
    assert first == second


def test_one_failing_image_does_not_lose_the_batch(batch, monkeypatch):
    method = create_method("generator_params")
    original = type(method).score_one

    def flaky(self, image):
        if image is batch[0]:
            raise RuntimeError("boom")
        return original(self, image)

    monkeypatch.setattr(type(method), "score_one", flaky)
    results = method.score(batch)
    assert results[0].abstained and results[0].evidence[0].code == "generator_params.failed"
    assert "boom" in results[0].evidence[0].message
    assert results[0].details["failure"] == "RuntimeError: boom"
    assert results[1].decisive
    # the verdict of the image it failed on says so; the other's does not
    from detector.pipeline import Detector

    detector = Detector(["generator_params"])
    detector.methods = [method]
    first, second = detector.score(batch[:2])
    assert first.degraded == ("generator_params: RuntimeError: boom",) and not second.degraded


def test_opt_in_methods_run_only_when_named():
    """The artifact method is measured to hurt the default verdict on real-world sources: it
    stays registered and runs when named, but no default method set includes it."""
    from detector.cli import _detector_spec, build_parser
    from detector.methods import create_methods, default_method_names

    assert METHODS.get("artifact").in_default is False
    defaults = default_method_names()
    assert "artifact" not in defaults and "model" in defaults and "c2pa" in defaults
    assert {m.name for m in create_methods()} == set(defaults)
    with_memory = default_method_names(also={"known_image"})  # what an option implies
    assert with_memory == sorted(set(defaults) | {"known_image"})
    assert [m.name for m in create_methods(["artifact"])] == ["artifact"]
    args = build_parser().parse_args(["score", "--memory-db", "x.sqlite", "x.jpg"])
    names, _ = _detector_spec(args)  # an explicit option adds its method to the default set
    assert "known_image" in names and "artifact" not in names
    args = build_parser().parse_args(["score", "--methods", "model,artifact", "x.jpg"])
    assert _detector_spec(args)[0] == ["model", "artifact"]


def _scripted(kind=Kind.METADATA, **attrs):
    """A Method subclass that abstains on every image, with ``attrs`` (availability, ...)."""
    from detector.methods import Method

    def score(self, images):
        return [self.abstain() for _ in images]

    body = {"kind": kind, "score": score, "__module__": __name__, **attrs}
    return type("Scripted", (Method,), body)


def test_a_kind_must_be_a_kind(method_registry):
    """A kind that was not a Kind broke `synthdetect methods` and every verdict."""
    cls = register_method("by_value")(_scripted(kind="artifact"))
    assert cls.kind is Kind.ARTIFACT  # its value is read as the member
    with pytest.raises(RegistryError, match=r"method 'odd': kind 'pixels' is not a Kind \(one of"):
        register_method("odd")(_scripted(kind="pixels"))
    with pytest.raises(RegistryError, match="kind"):
        register_method("no_kind")(type("NoKind", (PerImageMethod,), {"score_one": None}))
    assert "odd" not in method_registry and "no_kind" not in method_registry


def _explode(cls, **options):
    raise RuntimeError("availability exploded")


def test_an_availability_check_that_raises_is_a_reason(method_registry, capsys):
    """It broke `synthdetect methods`, a plain `score` and `serve` startup, even when the
    method was not selected."""
    from detector.cli import main
    from detector.methods import MethodUnavailable, default_method_names

    register_method("fragile")(_scripted(availability=classmethod(_explode)))
    described = method_registry.get("fragile").describe()
    reason = "availability check failed: RuntimeError: availability exploded"
    assert described["available"] is False and described["reason"] == reason
    assert "fragile" not in default_method_names() and "c2pa" in default_method_names()
    assert "fragile" not in method_names(available_only=True)
    with pytest.raises(MethodUnavailable, match=f"method 'fragile' is unavailable: {reason}"):
        create_method("fragile")
    assert main(["methods"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("fragile ")]
    assert line.endswith(f"[unavailable: {reason}]")


def test_a_constructor_that_raises_is_a_method_that_failed_to_start(
    method_registry, tmp_path, capsys
):
    """score, scan, bench accuracy and serve startup ended in a traceback (and the server
    would answer an unavailable method's 400 with a stack trace in its log)."""
    from detector.cli import main
    from detector.methods import MethodUnavailable
    from detector.pipeline import Detector

    def boom(self, **options):
        raise RuntimeError("init exploded")

    register_method("broken_init")(_scripted(__init__=boom))
    message = "method 'broken_init' failed to start: RuntimeError: init exploded"
    with pytest.raises(MethodUnavailable, match=message) as caught:
        Detector(["c2pa", "broken_init"])
    # a ValueError too: serve and bench accuracy report it as a bad option, not a traceback
    assert isinstance(caught.value, ValueError)
    image = tmp_path / "x.png"
    image.write_bytes(P.encode(P.synthetic_scene(1, 64, 64), "PNG"))
    assert main(["score", "--methods", "c2pa,broken_init", str(image)]) == 2
    assert capsys.readouterr().err.strip() == f"synthdetect: {message}"


def test_the_very_same_class_may_register_again():
    """A module imported a second time (a plugin that failed once and is loaded again by a
    second entry point) defines its class again: that is not a name collision."""
    reg: Registry[type] = Registry("thing")
    source = "class Thing:\n    pass\n"
    first, second = ({"__name__": "plug"}, {"__name__": "plug"})
    exec(source, first), exec(source, second)
    reg.register("thing")(first["Thing"])
    reg.register("thing")(second["Thing"])
    assert reg.get("thing") is second["Thing"]
    other: dict = {"__name__": "elsewhere"}
    exec(source, other)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("thing")(other["Thing"])


def test_atomic_undoes_what_a_failing_block_registered():
    reg: Registry[int] = Registry("thing")
    reg.register("kept")(1)
    with pytest.raises(ImportError), reg.atomic():
        reg.register("half")(2)
        raise ImportError("no module named optional_dependency")
    assert reg.names() == ["kept"]


_PLUGIN = """
from detector.methods import Kind, PerImageMethod, register_method

@register_method("plugged")
class Plugged(PerImageMethod):
    kind = Kind.METADATA
    description = "a third party's method"

    def score_one(self, image):
        return self.result(0.75, weight=0.5)
"""

_HALF = """
from detector.methods import Kind, PerImageMethod, register_method

@register_method("half_plugged")
class Half(PerImageMethod):
    kind = Kind.METADATA

    def score_one(self, image):
        return self.result(0.99, decisive=True)

import optional_dependency_missing_xyz
"""


@pytest.mark.integration
def test_plugin_methods_load_in_every_process(tmp_path):
    """Plugin methods existed only where the command line had loaded its plugins: a `serve
    --processes` child (spawned) answered 400 unknown method, as did a scan --ray worker and
    Detector(["plugged"]) from Python. A plugin that fails registers nothing (its method ran
    although reported unavailable) and the built-in methods work."""
    import os
    import subprocess
    import sys

    from tests.pluginfiles import install_plugin

    site = install_plugin(
        tmp_path / "site",
        "thirdparty",
        {"synthdetect.methods": {"plugged": "plugged_method", "zhalf": "half_plugged"}},
        {"plugged_method": _PLUGIN, "half_plugged": _HALF},
    )
    program = """
import json
from detector.methods import METHODS
from detector.pipeline import Detector
from detector.image import decode
from training import metadata_writers as P

det = Detector(["plugged", "c2pa"])
(verdict,) = det.score([decode(P.encode(P.synthetic_scene(1, 64, 64), "PNG"))])
try:
    METHODS.get("half_plugged")
except KeyError as exc:
    unknown = str(exc)
print(json.dumps({"p": verdict.to_dict()["methods"]["plugged"]["probability"],
                  "names": METHODS.names(), "unknown": unknown}))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.getcwd()])}
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["p"] == 0.75
    assert "plugged" in out["names"] and "c2pa" in out["names"]
    assert "half_plugged" not in out["names"]
    assert "plugin 'zhalf' failed to load: ModuleNotFoundError" in out["unknown"]
    assert (
        "method plugin 'zhalf' (half_plugged) failed to load: ModuleNotFoundError: No module "
        "named 'optional_dependency_missing_xyz'" in done.stderr
    )
