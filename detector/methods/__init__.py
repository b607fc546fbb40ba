"""Detection methods behind one interface and one registry.

Importing this package registers the built-in methods. See ``base`` for the contract.
"""

# Built-in methods register themselves on import.
from detector.methods import (  # noqa: F401
    artifact,
    c2pa_manifest,
    exif_hints,
    generator_params,
    iptc,
    known_image,
    model,
    watermark,
)
from detector.methods.base import (
    Evidence,
    Kind,
    Method,
    MethodResult,
    PerImageMethod,
    Strength,
    Supports,
)
from detector.methods.registry import (
    METHODS,
    MethodUnavailable,
    create_method,
    create_methods,
    default_method_names,
    method_names,
    register_method,
)

__all__ = [
    "METHODS",
    "Evidence",
    "Kind",
    "Method",
    "MethodResult",
    "MethodUnavailable",
    "PerImageMethod",
    "Strength",
    "Supports",
    "create_method",
    "create_methods",
    "default_method_names",
    "method_names",
    "register_method",
]
