"""Optional parts of the package (``pip install 'streamtrain[NAME]'``) and the error when one is
missing, so every command can answer it with the same exit code (``cli.common.ExitCode``)."""

from __future__ import annotations


class MissingExtra(ValueError):
    """A setting asks for an optional part that is not installed.

    >>> error = MissingExtra("grpc", "serve.grpc_port", ImportError("No module named 'grpc'"))
    >>> str(error).endswith("run `pip install 'streamtrain[grpc]'` or unset serve.grpc_port")
    True
    """

    def __init__(self, extra: str, setting: str, cause: ImportError) -> None:
        super().__init__(
            f"{setting} is set but needs the optional {extra!r} part ({cause}); run "
            f"`pip install 'streamtrain[{extra}]'` or unset {setting}"
        )
        self.extra = extra
