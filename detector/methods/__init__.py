"""Detection methods behind one interface and one registry.

Importing this package registers the built-in methods. See ``base`` for the contract.
"""

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
from detector.registry import import_plugins

# Every module here registers its methods on import: a new one is found by being here.
import_plugins(__name__, __path__, skip=("base", "registry"))

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
