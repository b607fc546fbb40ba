"""The detector's ONNX path needs no torch: scoring, the CLI and the server's service load
without it (torch is only for training and the optional torch engine)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

_BLOCK = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this process")
sys.meta_path.insert(0, _NoTorch())
"""


def test_scoring_with_the_bundled_onnx_model_runs_without_torch():
    code = _BLOCK + textwrap.dedent(
        """
        import json
        from pathlib import Path
        from detector.bundled import DEFAULT_MODEL
        from detector.methods import method_names
        from detector.pipeline import Detector
        from serving.service import Service, ServiceConfig

        samples = sorted(Path("detector/assets/samples").glob("*.*"))
        detector = Detector(method_names(available_only=True))
        verdicts = detector.score_bytes([p.read_bytes() for p in samples])
        service = Service(ServiceConfig(model=DEFAULT_MODEL))
        (served,) = service.score_blobs([samples[0].read_bytes()])
        service.close()
        print(json.dumps({"labels": {p.name: v.label for p, v in zip(samples, verdicts)},
                          "served": served.label, "torch": "torch" in sys.modules}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["torch"] is False
    assert result["labels"]["c2pa-ai-generated.jpg"] == "generated"
    assert result["labels"]["sd-webui-parameters.png"] == "generated"
    assert result["served"] in ("generated", "camera", "uncertain")


def test_the_command_line_starts_without_importing_torch():
    """Every command is registered when the CLI starts; one module that imported torch at its
    top (1.3 s) made every `synthdetect` call, --help included, 3 s instead of under 1 (and the
    test suite, which runs the CLI hundreds of times, minutes slower). Torch loads when a
    command that needs it runs, not before."""
    code = textwrap.dedent(
        """
        import json, sys
        from detector.cli import build_parser
        build_parser()
        print(json.dumps(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == []
