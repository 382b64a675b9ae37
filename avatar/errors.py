"""User-facing errors. Anything raised as :class:`AvatarError` is printed by the CLI as one clear
message (what is wrong and how to fix it) with a non-zero exit code, instead of a traceback."""


class AvatarError(Exception):
    """An error caused by the user's input or environment, with a message that names the fix."""


class MissingAssetError(AvatarError, FileNotFoundError):
    """A model file or asset the user must supply is missing or unreadable."""


class UnsafePickleError(AvatarError):
    """A pickle asked to build an object outside the allow-list; it was refused unopened."""
