"""Two answers the audit found unhelpful, through a real worker on a socket.

1. A path with a stray ``/`` at the end (``POST /v2/models/m/infer/``) got Starlette's
   bodiless ``307`` to the path without it; OIP clients (tritonclient, KServe's) do not
   follow redirects, so the caller saw an empty answer. Now a 404 whose JSON body names the
   path, like every other unknown route.
2. ``POST /v2/admin/pin {"version": 99999999999999999999}`` said "version must be a
   non-negative integer", which it is; now it says how many digits are accepted.
3. An unexpected failure (below).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import torch
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from streamtrain.sample.spec import SampleSpec
from streamtrain.serve.protocol.admin import AdminEndpoints
from streamtrain.serve.protocol.rest import create_app
from streamtrain.serve.weights.inference import head_for
from streamtrain.serve.weights.retained import RetainedVersions
from streamtrain.serve.weights.slot import WeightSlot
from streamtrain.snapshot.manifest import SnapshotHeader
from tests.serve_fixtures import running_worker, served_model

SPEC = SampleSpec((2,), "regression")
TOKEN = "t0ken"


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    slot = WeightSlot(torch.nn.Linear(2, 1))
    slot.load(
        {"weight": torch.tensor([[1.0, 1.0]]), "bias": torch.tensor([0.5])}, SnapshotHeader(1, "r")
    )
    served = served_model(slot, SPEC, "m")
    retained = RetainedVersions(slot, torch.nn.Linear(2, 1), head_for(SPEC), torch.device("cpu"), 2)
    admin = AdminEndpoints(retained, SecretStr(TOKEN))
    app = create_app(served=served, max_body_bytes=1 << 20, extra_routes=admin.routes())
    with running_worker(served, app) as worker:
        yield worker.url


BODY = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/models/m/infer/"),
        ("POST", "/v2/models/m/versions/1/infer/"),
        ("GET", "/v2/models/m/"),
        ("GET", "/v2/health/ready/"),
        ("GET", "/v2/admin/versions/"),
    ],
)
def test_a_trailing_slash_is_a_404_naming_the_path(base: str, method: str, path: str) -> None:
    answer = httpx.request(method, base + path, json=BODY, timeout=10, follow_redirects=False)
    assert answer.status_code == 404, (answer.status_code, answer.headers, answer.text)
    assert answer.json() == {"error": f"no route {path}"}
    assert httpx.post(f"{base}/v2/models/m/infer", json=BODY, timeout=10).status_code == 200


def test_a_pin_version_with_too_many_digits_says_how_many_are_accepted(base: str) -> None:
    answer = httpx.post(
        f"{base}/v2/admin/pin",
        json={"version": 10**20},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert answer.status_code == 400
    assert "1 to 19 ASCII digits" in answer.json()["error"], answer.text


def test_an_unexpected_failure_is_a_json_500_on_both_paths() -> None:
    """3. A failure nobody expected was answered ``500 text/plain`` "Internal Server Error"
    (Starlette's default, and the infer protocol's copy of uvicorn's); now the JSON error
    body every other answer has. Both are still logged."""

    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug")

    async def broken_answer(*args: object) -> object:
        raise RuntimeError("a bug in the infer route")

    slot = WeightSlot(torch.nn.Linear(2, 1))
    served = served_model(slot, SPEC, "m")
    app = create_app(served=served, max_body_bytes=1 << 20, extra_routes=[Route("/broken", broken)])
    app.state.infer_route.answer = broken_answer  # the fast protocol's own path
    with running_worker(served, app) as worker:
        for answer in (
            httpx.get(f"{worker.url}/broken", timeout=10),
            httpx.post(f"{worker.url}/v2/models/m/infer", json=BODY, timeout=10),
        ):
            assert answer.status_code == 500
            assert answer.headers["content-type"] == "application/json"
            assert "internal error" in answer.json()["error"]
