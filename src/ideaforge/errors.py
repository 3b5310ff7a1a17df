"""The exception tree, drawn in one place.

    IdeaforgeError            anything ideaforge raises on purpose
    ├── EnvError              a malformed or broken environment (ideaforge.toml, missing files)
    ├── EditRefused           an edit that touches what it may not, or cannot be applied
    ├── ExecutionError        the executor could not run a trial at all (not a trial failure)
    ├── StoreError            the campaign database is missing, locked or from a newer version
    │   └── DiskFull          the campaign's disk is (nearly) full: stopped cleanly, resumable
    ├── ConfigError           bad command-line or campaign settings
    └── LLMError              a model call failed for good (after retries)
        └── MissingKey        a provider key named by reference is not set

Trial failures are not exceptions: they are outcomes (see execute.outcomes).
"""


class IdeaforgeError(Exception):
    """Base class; the CLI prints these without a traceback."""


class EnvError(IdeaforgeError):
    pass


class EditRefused(IdeaforgeError):
    pass


class ExecutionError(IdeaforgeError):
    pass


class StoreError(IdeaforgeError):
    pass


class DiskFull(StoreError):
    """Raised before a write would fill the disk, or when SQLite found it full; nothing is lost."""

    def __init__(self, message: str, path: str = "", needed_bytes: int = 0, free_bytes: int = 0):
        super().__init__(message)
        self.path = path
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes


class ConfigError(IdeaforgeError):
    pass


class LLMError(IdeaforgeError):
    pass


class MissingKey(LLMError):
    pass
