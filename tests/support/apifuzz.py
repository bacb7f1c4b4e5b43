"""Property-based fuzzing of an HTTP API from its OpenAPI document (schemathesis + hypothesis).

:func:`fuzz` runs every operation of a document against a live server, with schema-valid and
schema-invalid (negative) cases, a bounded number of examples each, and collects what breaks:
a response >= 500, a status code the document does not list, a body or content type that
violates the document. Cross-field rules a document cannot express (``end`` before ``start``)
are why "a valid request was rejected" is not a failure here.
"""

from __future__ import annotations

import re

import pyarrow as pa
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

ARROW_STREAM = "application/vnd.apache.arrow.stream"


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _arrow_bodies():
    """Arrow IPC request bodies: random bytes, a truncated stream, a stream of the wrong
    columns and an empty stream of the metrology schema (so both the decoder's and the
    validator's refusals are reached)."""
    from atomscale_lab.schema import METROLOGY

    wrong = _ipc(pa.table({"x": [1, 2, 3]}))
    return st.one_of(
        st.binary(max_size=512),
        st.sampled_from([wrong, wrong[: len(wrong) // 2], _ipc(METROLOGY.schema.empty_table())]),
    )


# schemathesis has no serializer for Arrow bodies: generate them (its documented hook)
schemathesis.openapi.media_type(ARROW_STREAM, _arrow_bodies())

_ANSWER_5XX = re.compile(r"[\]\s]5\d\d (GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) /")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def fuzz(
    doc: dict,
    base_url: str,
    session: requests.Session,
    headers: dict,
    *,
    examples: int = 25,
    path_values: dict | None = None,
    timeout: float = 30,
    **call_kwargs,
) -> dict[str, str]:
    """``{operation: failure}`` for every operation that broke (empty when none did).

    ``path_values``: real values for path parameters (e.g. an existing run id), drawn as often
    as generated ones so that deep code paths are reached, not only 404s. ``call_kwargs`` go to
    each request (e.g. ``verify=`` a CA file).
    """
    schema = schemathesis.openapi.from_dict(doc)
    failures: dict[str, str] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        strategies = []
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategies.append(op.as_strategy(generation_mode=mode))
            names = {p.name for p in op.path_parameters}
            pinned = {k: v for k, v in (path_values or {}).items() if k in names}
            if pinned and mode is GenerationMode.POSITIVE:
                strategies.append(op.as_strategy(generation_mode=mode, path_parameters=pinned))

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
        )
        @given(case=st.one_of(strategies))
        def run(case):
            response = case.call(
                base_url=base_url,
                session=session,
                headers=dict(headers),
                timeout=timeout,
                **call_kwargs,
            )
            case.validate_response(response, checks=CHECKS)

        try:
            run()
        except BaseException as e:  # noqa: BLE001 - hypothesis raises groups; we report them
            if isinstance(e, KeyboardInterrupt):
                raise
            failures[op.label] = str(e)[:3000]
    return failures


def server_errors(log_text: str) -> list[str]:
    """Lines of a server log that show an unhandled exception or a 5xx answer."""
    bad = []
    for line in log_text.splitlines():
        if (
            "Traceback (most recent call last)" in line
            or "Uncaught exception" in line
            or _ANSWER_5XX.search(line)
        ):
            bad.append(line)
    return bad
