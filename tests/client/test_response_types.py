"""The client's response dataclasses agree with the service's pydantic schemas.

The client mirrors the answers as plain dataclasses (it runs in Slicer's Python without pydantic);
this checks, for each pair, that the fields are the same, that a field the client needs is one
the service always sends, and that the defaults agree, so a field added to or changed in one side
fails here until the other follows.
"""

from __future__ import annotations

import dataclasses

import pytest
from pydantic_core import PydanticUndefined

from reciprocalseg.client import responses
from reciprocalseg.service import schemas

# client dataclass -> the schema it mirrors; fields only the client has (with why).
PAIRS = {
    "CaseInfo": "CaseInfo",
    "CaseQA": "CaseQA",
    "DeviceInfo": "DeviceInfo",
    "LabelHistory": "LabelHistory",
    "LabelVersion": "LabelVersion",
    "ModelList": "ModelList",
    "ModelRound": "ModelRound",
    "NextCase": "NextCase",
    "PredictionResult": "PredictionInfo",
    "RefinedPrediction": "RefineInfo",
    "ServiceInfo": "ServiceInfo",
    "StructureQA": "StructureQA",
    "TrainingEvents": "TrainingEvents",
    "TrainingStatus": "TrainingStatus",
}
# The paths of the files the client downloaded; the service sends their URLs as ``files``.
CLIENT_ONLY = {"PredictionResult": {"teacher", "student", "disagreement"}, "RefinedPrediction": {"labels"}}
SCHEMA_ONLY = {"PredictionResult": {"files"}}


def _client_fields(name: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(getattr(responses, name))}


def _default(f: dataclasses.Field) -> object:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def test_every_response_dataclass_is_checked() -> None:
    dataclass_names = {
        n for n, v in vars(responses).items() if isinstance(v, type) and dataclasses.is_dataclass(v)
    }
    assert dataclass_names == set(PAIRS)


def field_differences(client_name: str, model: type) -> tuple[set[str], set[str]]:
    """The fields only the client's dataclass has, and those only the schema ``model`` has."""
    ours = set(_client_fields(client_name)) - CLIENT_ONLY.get(client_name, set())
    theirs = set(model.model_fields) - SCHEMA_ONLY.get(client_name, set())
    return ours - theirs, theirs - ours


@pytest.mark.parametrize("client_name", sorted(PAIRS))
def test_the_fields_match_the_schema(client_name: str) -> None:
    only_ours, only_theirs = field_differences(client_name, getattr(schemas, PAIRS[client_name]))
    assert not only_ours, f"only in the client: {only_ours}"
    assert not only_theirs, f"only in the schema: {only_theirs}"


@pytest.mark.parametrize("client_name", sorted(PAIRS))
def test_required_fields_and_defaults_agree(client_name: str) -> None:
    model = getattr(schemas, PAIRS[client_name])
    for name, f in _client_fields(client_name).items():
        if name not in model.model_fields:
            continue
        schema_field = model.model_fields[name]
        ours = _default(f)
        if ours is dataclasses.MISSING:
            assert schema_field.is_required(), f"{client_name}.{name}: required here, optional in the schema"
            continue
        theirs = schema_field.get_default(call_default_factory=True)
        if theirs is PydanticUndefined:
            continue  # always sent; the client's default only serves older services
        assert ours == theirs, f"{client_name}.{name}: default {ours!r} here, {theirs!r} in the schema"


def test_the_check_sees_a_missing_field() -> None:
    """The comparison is not vacuous: a schema with one more field does not match."""
    from pydantic import create_model

    wider = create_model("Wider", __base__=schemas.DeviceInfo, extra_field=(int, 0))
    assert field_differences("DeviceInfo", wider) == (set(), {"extra_field"})
