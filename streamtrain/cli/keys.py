"""`streamtrain keys generate`: an Ed25519 key pair for signed snapshots."""

from __future__ import annotations

from pathlib import Path

import typer

from streamtrain.cli.command import app
from streamtrain.cli.common import fail

keys_app = typer.Typer(
    name="keys",
    help="Signing keys for weight snapshots (see docs/snapshots.md, trust).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(keys_app)


@keys_app.command("generate")
def generate(
    out_dir: Path = typer.Option(Path("keys"), "--out-dir", "-o", help="Directory to write to."),
    name: str = typer.Option("trainer", help="File name stem: <name>.key and <name>.pub."),
    force: bool = typer.Option(False, "--force", help="Replace existing files of that name."),
) -> None:
    """Write an Ed25519 key pair: <name>.key (private, mode 0600) for the trainer's
    train.signing_key, <name>.pub for the servers' serve.trusted_keys."""
    from streamtrain.snapshot.signing import KeyFileError, generate_key_pair

    if not name or "/" in name or name.startswith("."):
        fail(f"--name {name!r} must be a plain file name stem such as 'trainer'")
    try:
        private_path, public_path, key_id = generate_key_pair(out_dir, name, force=force)
    except KeyFileError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write keys under {out_dir}: {exc.strerror or exc}")
    typer.echo(f"key id {key_id}")
    typer.echo(f"  private: {private_path}  (mode 0600; train.signing_key)")
    typer.echo(f"  public:  {public_path}  (serve.trusted_keys)")
