"""Generator plugins of the offline corpus (see ``base`` for the interface)."""

# Built-in generators register themselves on import.
from training.generators import latent, packaged, trained  # noqa: F401
from training.generators.base import GENERATORS, Generator, PrepareContext, register_generator

__all__ = ["GENERATORS", "Generator", "PrepareContext", "register_generator"]
