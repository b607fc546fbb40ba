"""synthdetect's inference-time library: everything needed to score an image.

>>> from detector import Detector, decode
>>> verdict = Detector().score([decode(open("x.png", "rb").read())])[0]
>>> verdict.label, verdict.probability, verdict.summary
"""

from importlib import metadata as _metadata

from detector.fusion import FusionConfig, Verdict, fuse
from detector.image import DecodedImage, DecodeLimits, ImageError, decode, decode_file
from detector.pipeline import Detector

try:  # the version lives in pyproject.toml only
    __version__ = _metadata.version("synthdetect")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "DecodeLimits",
    "DecodedImage",
    "Detector",
    "FusionConfig",
    "ImageError",
    "Verdict",
    "__version__",
    "decode",
    "decode_file",
    "fuse",
]
