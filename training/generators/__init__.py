"""Generator plugins of the offline corpus (see ``base`` for the interface)."""

from detector.registry import import_plugins
from training.generators.base import GENERATORS, Generator, PrepareContext, register_generator

# Every module here registers its generators on import: a new one is found by being here.
import_plugins(__name__, __path__, skip=("base",))

__all__ = ["GENERATORS", "Generator", "PrepareContext", "register_generator"]
