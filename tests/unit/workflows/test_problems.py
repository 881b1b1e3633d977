"""One formatter for pydantic errors: every edge says a problem the same way."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from guardrails.plugins import validation_problems
from guardrails.policy_rules import pydantic_problems
from workflows.inputs import problems_of
from workflows.problems import WHERE_MAX, problems


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=5)

    @field_validator("name")
    @classmethod
    def _no_x(cls, v: str) -> str:
        if "x" in v:
            raise ValueError("must not contain x")
        return v


class Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[Item]


def error(doc: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        Doc.model_validate(doc)
    return caught.value


def test_our_messages_lose_pydantics_prefix_and_unknown_fields_are_named_so() -> None:
    exc = error({"items": [{"name": "ax"}, {"name": "b", "colour": 1}], "extra": 2})
    assert problems(exc) == [
        "items.0.name: must not contain x",
        "items.1.colour: unknown field",
        "extra: unknown field",
    ]


def test_every_edge_says_the_same_thing_and_only_spells_the_location_its_way() -> None:
    exc = error({"items": [{"name": "ax"}]})
    assert problems_of(exc) == ["items.0.name: must not contain x"]  # a workflow payload
    assert validation_problems(exc, "params") == ["params.items.0.name: must not contain x"]
    assert pydantic_problems(exc) == ["items[0].name: must not contain x"]  # a policy file


def test_a_hostile_document_gives_a_bounded_list_of_bounded_lines() -> None:
    exc = error({"items": [{"name": "y", "k" * 10_000: 1}] * 30})
    lines = problems(exc, limit=20)
    assert len(lines) == 21 and lines[-1] == "… and 10 more problem(s)"
    assert all(len(line.split(": ")[0]) <= WHERE_MAX for line in lines[:-1])
