"""The one exception type the CLI turns into a single clear line on stderr."""


class SpecGuardError(Exception):
    """A user-facing error: bad input, missing or corrupt model, incompatible pair, context overflow."""


class ModelError(SpecGuardError):
    """A model file is missing, corrupt, or incompatible with its partner."""
