"""`streamtrain admin`: inspect, pin, unpin and roll back the versions a server answers with,
and show, set or clear its traffic split (``streamtrain admin split``).

Talks to the server's admin API (``serve/protocol/admin.py``) with the bearer token of
``serve.admin_token``, given by ``--token`` or, better (kept out of shell history and process
lists), the ``STREAMTRAIN_ADMIN_TOKEN`` environment variable.
"""

from __future__ import annotations

import re
from typing import Any

import typer

from streamtrain.ascii_int import parse_ascii_int
from streamtrain.cli.command import app
from streamtrain.cli.common import ExitCode, fail

admin_app = typer.Typer(
    name="admin",
    help="Pin, unpin and roll back served versions; set a traffic split (docs/serving.md).",
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


def _admin_url(url: str, path: str) -> str:
    """The admin API's URL under ``url``; exit 2 when ``url`` is not an http(s) URL (httpx's
    InvalidURL and the UnicodeEncodeError of bytes that are not text were tracebacks)."""
    import httpx

    target = f"{url.rstrip('/')}/v2/admin/{path}"
    try:
        parsed = httpx.URL(target)
        ok, why = parsed.scheme in ("http", "https") and bool(parsed.host), "not http(s)://host"
    except (httpx.InvalidURL, UnicodeError) as exc:
        ok, why = False, str(exc)
    if not ok:
        fail(f"--url {url!r} is not a server URL ({why}); write e.g. http://127.0.0.1:8000")
    return target


_TOKEN_TEXT = re.compile(r"[!-~]+")  # visible ASCII: what a bearer token header can carry


def _call(
    method: str, url: str, path: str, token: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The admin API's JSON answer; a one-line error and exit on anything else."""
    import httpx

    if not _TOKEN_TEXT.fullmatch(token):
        # A header carries ASCII only: httpx raised UnicodeEncodeError (a traceback) here.
        fail(
            "--token / STREAMTRAIN_ADMIN_TOKEN must be printable ASCII without spaces, as "
            "serve.admin_token is: copy the server's token exactly"
        )
    target = _admin_url(url, path)
    try:
        response = httpx.request(
            method,
            target,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        fail(f"cannot reach the server at {url}: {exc}; check --url", ExitCode.FAILED)
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        fail(
            f"{url} answered HTTP {response.status_code} without a JSON object: is it a "
            "streamtrain server?"
        )
    if response.status_code != 200:
        fail(f"HTTP {response.status_code}: {document.get('error', document)}", ExitCode.FAILED)
    return document


def _versions(
    method: str, url: str, path: str, token: str, body: dict[str, Any] | None = None
) -> None:
    document = _call(method, url, path, token, body)
    pinned = document["pinned"] or "none"
    typer.echo(
        f"live {document['live']}  pinned {pinned}  retained {', '.join(document['retained'])}"
    )
    if document["pinned"] and not document["pin_persisted"]:
        typer.echo("note: the server has no serve.cache_dir, so the pin ends with the process")


@admin_app.command("status")
def status(url: str = _URL, token: str = _TOKEN) -> None:
    """Show the live, pinned and retained versions."""
    _versions("GET", url, "versions", token)


@admin_app.command("pin")
def pin(
    version: int = typer.Argument(..., min=0, help="A retained version (see `status`)."),
    url: str = _URL,
    token: str = _TOKEN,
) -> None:
    """Make a retained version live and keep it live while new snapshots arrive."""
    _versions("POST", url, "pin", token, {"version": version})


@admin_app.command("unpin")
def unpin(url: str = _URL, token: str = _TOKEN) -> None:
    """Let the newest version go live again."""
    _versions("POST", url, "unpin", token)


@admin_app.command("rollback")
def rollback(url: str = _URL, token: str = _TOKEN) -> None:
    """Make the retained version before the live one live, and pin it."""
    _versions("POST", url, "rollback", token)


split_app = typer.Typer(
    name="split",
    help="Show, set or clear the traffic split or shadow (docs/serving.md).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
admin_app.add_typer(split_app)


def _show_split(document: dict[str, Any]) -> None:
    plan = document.get("split")
    if plan is None:
        typer.echo("no split: every request is answered by the live version")
        return
    version = document.get("candidate_version")
    resolved = (
        "no version other than live: nothing routed" if version is None else f"version {version}"
    )
    typer.echo(f"{plan['mode']}: candidate {plan['candidate']} ({resolved}), share {plan['share']}")


@split_app.command("show")
def split_show(url: str = _URL, token: str = _TOKEN) -> None:
    """Show the split: its candidate, share and mode, and the version the candidate is."""
    _show_split(_call("GET", url, "split", token))


@split_app.command("set")
def split_set(
    candidate: str = typer.Argument(..., help="A retained version number, or 'newest'."),
    share: float = typer.Option(..., "--share", help="Fraction of requests, 0 to 1."),
    mode: str = typer.Option("split", "--mode", help="'split' (answers) or 'shadow' (logs)."),
    url: str = _URL,
    token: str = _TOKEN,
) -> None:
    """Route a share of requests (by request-id hash) to a candidate, or shadow it."""
    if candidate != "newest" and parse_ascii_int(candidate) is None:
        fail(f"CANDIDATE must be a version number or 'newest', got {candidate[:40]!r}")
    if not 0.0 <= share <= 1.0:  # NaN fails too
        fail(f"--share must be a fraction from 0 to 1, got {share}")
    if mode not in ("split", "shadow"):
        fail(f"--mode must be 'split' or 'shadow', got {mode[:40]!r}")
    body = {"candidate": candidate, "share": share, "mode": mode}
    _show_split(_call("POST", url, "split", token, body))


@split_app.command("clear")
def split_clear(url: str = _URL, token: str = _TOKEN) -> None:
    """End the split: the live version answers every request again."""
    _show_split(_call("DELETE", url, "split", token))
