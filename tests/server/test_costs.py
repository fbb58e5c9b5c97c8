"""``GET /v1/organization/costs``: OpenAI's Costs API shape, and who sees which tenant."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.testclient import TestClient

from parley.ledger import Ledger, UsageRecord
from parley.server.auth import AuthMiddleware, Limiter
from parley.server.costs import COSTS_PATH, costs_route
from parley.store import Database
from parley.store.keys import KeyStore

DAY = 86_400
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
ADMIN = "op-admin-token"


@dataclass
class Costs:
    client: TestClient
    acme: dict[str, str]
    globex: dict[str, str]
    admin: dict[str, str]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def app(ledger: Ledger | None, keys: KeyStore | None, admin_token: str | None = ADMIN) -> Starlette:
    return Starlette(
        routes=[costs_route(lambda: ledger)],
        middleware=[
            Middleware(AuthMiddleware, keys=keys, limiter=Limiter(), admin_token=admin_token)
        ],
    )


@pytest.fixture
def costs(database: Database) -> Iterator[Costs]:
    ledger = Ledger(database, clock=lambda: T0 + 2 * DAY + 60)
    ledger.write(
        [
            UsageRecord(tenant="acme", stage="llm", engine="cloud-llm", cost_nusd=10**9, time=T0),
            UsageRecord(tenant="acme", stage="tts", engine="espeak", cost_nusd=10**8, time=T0 + 1),
            UsageRecord(tenant="globex", stage="llm", engine="cloud-llm", cost_nusd=5, time=T0),
            UsageRecord(tenant="globex", stage="asr", engine="x", cost_nusd=7, time=T0 + DAY),
        ]
    )
    keys = KeyStore(database)
    acme, _ = keys.create_key("acme")
    globex, _ = keys.create_key("globex")
    with TestClient(app(ledger, keys)) as client:
        yield Costs(client, bearer(acme), bearer(globex), bearer(ADMIN))


def get(c: Costs, who: dict[str, str], query: str) -> Any:
    return c.client.get(f"{COSTS_PATH}?{query}", headers=who)


def projects(page: dict[str, Any]) -> set[str]:
    return {r["project_id"] for b in page["data"] for r in b["results"]}


def test_costs_shape_is_openais(costs: Costs) -> None:
    response = get(costs, costs.acme, f"start_time={T0}&end_time={T0 + DAY}")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"object", "data", "has_more", "next_page"}
    assert body["object"] == "page" and body["has_more"] is False and body["next_page"] is None
    [bucket] = body["data"]
    assert bucket["object"] == "bucket"
    assert (bucket["start_time"], bucket["end_time"]) == (T0, T0 + DAY)
    [result] = bucket["results"]
    assert result == {
        "object": "organization.costs.result",
        "amount": {"value": 1.1, "currency": "usd"},
        "line_item": None,
        "project_id": None,
    }


def test_costs_tenant_key_sees_only_its_tenant(costs: Costs) -> None:
    query = f"start_time={T0}&end_time={T0 + 2 * DAY}&group_by=project_id&group_by=line_item"
    acme = get(costs, costs.acme, query).json()
    assert projects(acme) == {"acme"}
    assert [(r["line_item"], r["amount"]["value"]) for r in acme["data"][0]["results"]] == [
        ("llm:cloud-llm", 1.0),
        ("tts:espeak", 0.1),
    ]
    assert projects(get(costs, costs.globex, query).json()) == {"globex"}
    # Asking for another tenant's project yields nothing of it.
    other = get(costs, costs.acme, query + "&project_ids=globex").json()
    assert projects(other) == set()
    both = get(costs, costs.acme, query + "&project_ids[]=globex&project_ids[]=acme").json()
    assert projects(both) == {"acme"}


def test_costs_admin_token_sees_every_tenant(costs: Costs) -> None:
    query = f"start_time={T0}&end_time={T0 + 2 * DAY}&group_by[]=project_id"
    page = get(costs, costs.admin, query).json()
    assert projects(page) == {"acme", "globex"}
    assert [[r["project_id"] for r in b["results"]] for b in page["data"]] == [
        ["acme", "globex"],
        ["globex"],
    ]
    only = get(costs, costs.admin, query + "&project_ids=globex").json()
    assert projects(only) == {"globex"}


def test_costs_pagination_over_http(costs: Costs) -> None:
    first = get(costs, costs.admin, f"start_time={T0}&limit=2").json()  # end: now, third day
    assert len(first["data"]) == 2 and first["has_more"] is True
    second = get(costs, costs.admin, f"start_time={T0}&limit=2&page={first['next_page']}").json()
    assert [b["start_time"] for b in second["data"]] == [T0 + 2 * DAY]
    assert second["has_more"] is False and second["next_page"] is None


@pytest.mark.parametrize(
    ("query", "param", "code"),
    [
        ("", "start_time", "missing_required_parameter"),
        ("start_time=soon", "start_time", "invalid_value"),
        (f"start_time={T0}&bucket_width=1h", "bucket_width", "invalid_value"),
        (f"start_time={T0}&group_by=model", "group_by", "invalid_value"),
        (f"start_time={T0}&limit=0", "limit", "invalid_value"),
        (f"start_time={T0}&limit=x", "limit", "invalid_value"),
        (f"start_time={T0}&page=zzz", "page", "invalid_value"),
        (f"start_time={T0}&end_time={T0}", "end_time", "invalid_value"),
    ],
)
def test_costs_bad_params_are_400_naming_the_param(
    costs: Costs, query: str, param: str, code: str
) -> None:
    response = get(costs, costs.acme, query)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


def test_costs_need_a_key_or_the_admin_token(costs: Costs) -> None:
    assert get(costs, {}, f"start_time={T0}").status_code == 401
    assert get(costs, bearer("op-admin-tokeX"), f"start_time={T0}").status_code == 401
    assert get(costs, bearer("sk-parley-" + "x" * 40), f"start_time={T0}").status_code == 401


def test_costs_admin_token_is_no_key_elsewhere(database: Database) -> None:
    async def other(request: Any) -> Any:
        raise AssertionError("not reached")

    from starlette.routing import Route

    keys = KeyStore(database)
    application = Starlette(
        routes=[Route("/v1/models", other)],
        middleware=[Middleware(AuthMiddleware, keys=keys, limiter=Limiter(), admin_token=ADMIN)],
    )
    with TestClient(application) as client:
        assert client.get("/v1/models", headers=bearer(ADMIN)).status_code == 401


def test_costs_without_admin_token_configured_no_one_is_admin(database: Database) -> None:
    with TestClient(app(Ledger(database), KeyStore(database), admin_token=None)) as client:
        response = client.get(f"{COSTS_PATH}?start_time={T0}", headers=bearer(ADMIN))
        assert response.status_code == 401


def test_costs_auth_off_is_the_default_tenant(database: Database) -> None:
    ledger = Ledger(database, clock=lambda: T0 + 10)
    ledger.write(
        [
            UsageRecord(tenant="", stage="llm", engine="faq", cost_nusd=3, time=T0),
            UsageRecord(tenant="acme", stage="llm", engine="faq", cost_nusd=4, time=T0),
        ]
    )
    with TestClient(app(ledger, None)) as client:
        page = client.get(f"{COSTS_PATH}?start_time={T0}&group_by=project_id").json()
        assert projects(page) == {""}
        admin = client.get(
            f"{COSTS_PATH}?start_time={T0}&group_by=project_id", headers=bearer(ADMIN)
        ).json()
        assert projects(admin) == {"", "acme"}


def test_costs_without_a_ledger_is_404(database: Database) -> None:
    with TestClient(app(None, KeyStore(database))) as client:
        response = client.get(f"{COSTS_PATH}?start_time={T0}", headers=bearer(ADMIN))
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
