from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from profiler_service.auth import require_read, require_write
from profiler_service.schemas import CHANNELS_SYNTAX, JobStatus, LutRequest, LutSummary, LutTable
from profiler_service.shapes import LayerShape, parse_shape
from profiler_service.state import ServiceState, service
from profiler_service.tables import check_request, requested_pairs

router = APIRouter(tags=["tables"])


@router.get("/lut/{shape}", response_model=LutTable, dependencies=[Depends(require_read)])
async def get_lut(
    shape: str,
    cin: str | None = Query(None, description=f"input channels to return: {CHANNELS_SYNTAX}"),
    cout: str | None = Query(None, description=f"output channels to return: {CHANNELS_SYNTAX}"),
    svc: ServiceState = Depends(service),
) -> Response:
    """The measured table of a layer shape on this device."""
    layer = parse_shape(shape)
    data = svc.tables.cached_json(layer, cin, cout)
    if data is None:  # the selection is parsed and the database read off the event loop
        data = await run_in_threadpool(svc.tables.json, layer, cin, cout)
    return Response(data, media_type="application/json")


async def _lut_request(request: Request) -> LutRequest:
    """The body, read only now: after the token check (FastAPI parses a declared body parameter before
    any dependency runs) and under ``HALP_MAX_BODY_BYTES`` (``limits.BodyLimit``)."""
    try:
        return LutRequest.model_validate_json(await request.body())
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        ) from None


@router.post(
    "/lut/{shape}",
    response_model=LutTable,
    responses={202: {"model": JobStatus, "description": "measuring; poll the Location"}},
    dependencies=[Depends(require_write)],
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": LutRequest.model_json_schema()}}}
    },
)
async def post_lut(shape: str, request: Request, svc: ServiceState = Depends(service)) -> Response:
    """Measure the points not yet stored; 200 with the table when nothing is missing."""
    layer, body = parse_shape(shape), await _lut_request(request)
    return await run_in_threadpool(_submit, svc, layer, body)


def _submit(svc: ServiceState, layer: LayerShape, body: LutRequest) -> Response:
    pairs = requested_pairs(layer, body)
    check_request(layer, pairs, svc.device, svc.settings, svc.gpu)
    submitted = svc.jobs.submit(layer, pairs)
    if submitted.job is None:
        table = svc.tables.read(layer, {c for c, _ in pairs}, {c for _, c in pairs})
        return Response(table.model_dump_json(), media_type="application/json")
    job = submitted.job
    return JSONResponse(job.model_dump(mode="json"), status_code=202, headers={"Location": f"/jobs/{job.id}"})


@router.get("/luts", response_model=list[LutSummary], dependencies=[Depends(require_read)])
def list_luts(svc: ServiceState = Depends(service)) -> list[LutSummary]:
    """Shapes with measured points on this device."""
    return svc.tables.summaries()
