"""The exception tree, drawn in one place.

    IdeaforgeError            anything ideaforge raises on purpose
    ├── EnvError              a malformed or broken environment (ideaforge.toml, missing files)
    ├── ModelInvalid          inside a trusted scorer: the untrusted model half broke the protocol or a check
    ├── EditRefused           an edit that touches what it may not, or cannot be applied
    ├── ExecutionError        the executor could not run a trial at all (not a trial failure)
    ├── StoreError            the campaign database is missing, locked or from a newer version
    │   └── DiskFull          the campaign's disk is (nearly) full: stopped cleanly, resumable
    ├── ConfigError           bad command-line or campaign settings
    └── LLMError              a model call failed for good (after retries)
        └── MissingKey        a provider key named by reference is not set

Trial failures are not exceptions: they are outcomes (the closed vocabulary in
`ideaforge.outcomes`, carried by `execute.record.TrialRecord`).
"""


class IdeaforgeError(Exception):
    """Base class; the CLI prints these without a traceback."""


class EnvError(IdeaforgeError):
    pass


class ModelInvalid(IdeaforgeError):
    """Raised by envs.protocol in a trusted scorer; the scorer turns it into an "invalid" result."""


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
