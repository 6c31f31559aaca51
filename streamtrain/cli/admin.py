"""`streamtrain admin`: inspect, pin, unpin and roll back the versions a server answers with.

Talks to the server's admin API (``serve/admin.py``) with the bearer token of
``serve.admin_token``, given by ``--token`` or, better (kept out of shell history and process
lists), the ``STREAMTRAIN_ADMIN_TOKEN`` environment variable.
"""

from __future__ import annotations

from typing import Any

import typer

from streamtrain.cli.command import app
from streamtrain.cli.common import ExitCode, fail

admin_app = typer.Typer(
    name="admin",
    help="Pin, unpin and roll back served versions (docs/serving.md).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(admin_app)

_URL = typer.Option("http://127.0.0.1:8000", "--url", help="The server's HTTP base URL.")
_TOKEN = typer.Option(
    ...,
    "--token",
    envvar="STREAMTRAIN_ADMIN_TOKEN",
    help="serve.admin_token of the server (env STREAMTRAIN_ADMIN_TOKEN).",
    show_default=False,
)


def _call(method: str, url: str, path: str, token: str, body: dict[str, Any] | None = None) -> None:
    import httpx

    try:
        response = httpx.request(
            method,
            f"{url.rstrip('/')}/v2/admin/{path}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        fail(f"cannot reach the server at {url}: {exc}; check --url", ExitCode.FAILED)
    try:
        document = response.json()
    except ValueError:
        fail(
            f"{url} answered HTTP {response.status_code} without JSON: is it a streamtrain server?"
        )
    if response.status_code != 200:
        fail(f"HTTP {response.status_code}: {document.get('error', document)}", ExitCode.FAILED)
    pinned = document["pinned"] or "none"
    typer.echo(
        f"live {document['live']}  pinned {pinned}  retained {', '.join(document['retained'])}"
    )
    if document["pinned"] and not document["pin_persisted"]:
        typer.echo("note: the server has no serve.cache_dir, so the pin ends with the process")


@admin_app.command("status")
def status(url: str = _URL, token: str = _TOKEN) -> None:
    """Show the live, pinned and retained versions."""
    _call("GET", url, "versions", token)


@admin_app.command("pin")
def pin(
    version: int = typer.Argument(..., min=0, help="A retained version (see `status`)."),
    url: str = _URL,
    token: str = _TOKEN,
) -> None:
    """Make a retained version live and keep it live while new snapshots arrive."""
    _call("POST", url, "pin", token, {"version": version})


@admin_app.command("unpin")
def unpin(url: str = _URL, token: str = _TOKEN) -> None:
    """Let the newest version go live again."""
    _call("POST", url, "unpin", token)


@admin_app.command("rollback")
def rollback(url: str = _URL, token: str = _TOKEN) -> None:
    """Make the retained version before the live one live, and pin it."""
    _call("POST", url, "rollback", token)
