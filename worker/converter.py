"""The data converter every changeguard client, worker and replayer uses.

It is Temporal's pydantic converter with one difference: a payload decoded *without* a type hint
never raises. Workflow handlers that accept any payload (``*args``) receive plain JSON values, and
a payload that is not decodable at all (an unknown encoding, bytes that are not JSON) arrives as
:class:`temporalio.common.RawValue` for the handler to refuse with a reason. Without this, such a
workflow input fails the workflow *task*, which Temporal retries forever (docs/design.md, I10).
Typed decoding (activity results, typed queries, models) is unchanged and still fails loudly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue
from temporalio.contrib.pydantic import PydanticPayloadConverter
from temporalio.converter import DataConverter


class LenientPayloadConverter(PydanticPayloadConverter):
    """The pydantic payload converter; untyped payloads it cannot decode become ``RawValue``."""

    def from_payloads(
        self, payloads: Sequence[Payload], type_hints: list[type] | None = None
    ) -> list[Any]:
        """Decode as pydantic does; without type hints, an undecodable payload is kept raw."""
        if type_hints:
            return super().from_payloads(payloads, type_hints)
        values: list[Any] = []
        for payload in payloads:
            try:
                values.extend(super().from_payloads([payload]))
            except Exception:  # unknown encoding, malformed JSON: the handler refuses it
                values.append(RawValue(payload))
        return values


data_converter = DataConverter(payload_converter_class=LenientPayloadConverter)
"""Use this converter everywhere: worker, clients, tests and the replayer."""
