"""The one exception type the CLI turns into a single clear line on stderr."""


class SpecGuardError(Exception):
    """A user-facing error: bad input, missing or corrupt model, incompatible pair, context overflow."""


class OptionError(SpecGuardError):
    """A bad option value; `param` names the option (the server's error object carries it, the CLI spells it as
    its flag)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class ModelError(SpecGuardError):
    """A model file is missing, corrupt, or incompatible with its partner."""
