"""The ingest API against its documented contract: the OpenAPI document it serves, the
routes it has, and the README's lists of task fields and problem codes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import falcon.inspect
import falcon.testing
import pytest
import schemathesis

from tests.support import contract
from tests.support.api import JSON, TASKS

# -- the OpenAPI document ---------------------------------------------------------------------


async def test_openapi_document_describes_every_route(api: falcon.testing.ASGIConductor) -> None:
    result = await api.simulate_get("/api/v1/openapi.json")
    assert result.status_code == 200
    doc = result.json
    assert doc["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(doc)  # validates the document itself
    documented = {(op.method.upper(), op.path) for op in _operations(schema)}
    routes = {
        (method.method, route.path)
        for route in falcon.inspect.inspect_routes(api.app.app)  # type: ignore[attr-defined]
        for method in route.methods
        if not method.internal
    }
    assert routes == documented
    codes = set(doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"])
    assert codes == set(contract.problem_codes()), "README.md's problem codes vs OpenAPI's"


@pytest.mark.parametrize(
    ("schema", "documented"),
    [("Task", contract.task_fields), ("Execution", contract.execution_fields)],
)
async def test_openapi_objects_are_the_documented_ones(
    api: falcon.testing.ASGIConductor, schema: str, documented: Callable[[], contract.Fields]
) -> None:
    """The served Task/Execution schemas have exactly the README's fields and values."""
    fields = documented()
    declared = (await api.simulate_get("/api/v1/openapi.json")).json["components"]["schemas"]
    properties = declared[schema]["properties"]
    assert set(properties) == set(fields.names), f"README.md's {schema} fields vs OpenAPI's"
    assert set(declared[schema]["required"]) == set(fields.names)
    for name, values in fields.values.items():
        assert properties[name]["enum"] == list(values), f"{schema}.{name}"


async def test_every_documented_problem_code_is_served(api: falcon.testing.ASGIConductor) -> None:
    """A few codes the API really answers with are among the README's (and its format)."""
    codes = contract.problem_codes()
    seen = {
        (await api.simulate_get(f"{TASKS}/nope")).json["code"],
        (await api.simulate_get("/api/v1/nowhere")).json["code"],
        (await api.simulate_delete(TASKS)).json["code"],
        (await api.simulate_get(TASKS, params={"cursor": "!!"})).json["code"],
        (await api.simulate_post(TASKS, body=b"{", headers=JSON)).json["code"],
    }
    assert seen <= set(codes), seen - set(codes)


def _operations(schema: Any) -> list[Any]:
    out = []
    for result in schema.get_all_operations():
        operation = result.ok()
        out.append(operation)
    return out
