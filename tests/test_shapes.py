"""Layer-shape keys: canonical round trip, limits, and junk that never crashes the service."""

from __future__ import annotations

import tempfile
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiler_service.app import create_app
from profiler_service.settings import Settings
from profiler_service.shapes import (
    DTYPES,
    GRAMMAR,
    InvalidLayerShape,
    InvalidPoint,
    LayerShape,
    format_shape,
    parse_shape,
)

dtypes = st.sampled_from(DTYPES)


@st.composite
def conv_shapes(draw) -> LayerShape:
    k = (draw(st.integers(1, 32)), draw(st.integers(1, 32)))
    d = (draw(st.integers(1, 16)), draw(st.integers(1, 16)))
    p = (draw(st.integers(0, 64)), draw(st.integers(0, 64)))
    # the input must cover the dilated kernel, or the output is empty (rejected)
    h = draw(st.integers(max(1, d[0] * (k[0] - 1) + 1 - 2 * p[0]), 4096))
    w = draw(st.integers(max(1, d[1] * (k[1] - 1) + 1 - 2 * p[1]), 4096))
    return LayerShape(
        op="conv2d",
        batch=draw(st.integers(1, 4096)),
        dtype=draw(dtypes),
        kernel=k,
        stride=(draw(st.integers(1, 32)), draw(st.integers(1, 32))),
        padding=p,
        dilation=d,
        groups=draw(st.integers(0, 65536)),
        height=h,
        width=w,
    )


linear_shapes = st.builds(
    LayerShape, op=st.just("linear"), batch=st.integers(1, 4096), dtype=dtypes, tokens=st.integers(1, 65536)
)


@given(st.one_of(conv_shapes(), linear_shapes))
def test_format_parse_round_trip(shape: LayerShape):
    key = format_shape(shape)
    assert parse_shape(key) == shape
    assert format_shape(parse_shape(key)) == key


@given(st.text(max_size=80))
def test_junk_raises_only_invalid_layer_shape(text: str):
    try:
        shape = parse_shape(text)
    except InvalidLayerShape as e:
        assert GRAMMAR in str(e)
    else:
        assert format_shape(shape) == text  # anything accepted is canonical


@pytest.mark.parametrize(
    "key",
    [
        "conv2d-k3x3-s1x1-p1x1-d1x1-g1-h56w56-b256-fp64",  # dtype
        "conv2d-k03x3-s1x1-p1x1-d1x1-g1-h56w56-b256-fp16",  # leading zero: not canonical
        "conv2d-k33x3-s1x1-p1x1-d1x1-g1-h56w56-b256-fp16",  # kernel > 32
        "conv2d-k3x3-s33x1-p1x1-d1x1-g1-h56w56-b256-fp16",  # stride > 32
        "conv2d-k3x3-s1x1-p1x1-d1x1-g1-h4097w56-b256-fp16",  # spatial > 4096
        "conv2d-k3x3-s1x1-p1x1-d1x1-g1-h56w56-b4097-fp16",  # batch > 4096
        "conv2d-k3x3-s1x1-p1x1-d1x1-g0-h56w56-b1-fp16",  # g0
        "conv2d-k7x7-s1x1-p0x0-d1x1-g1-h3w3-b1-fp16",  # empty output
        "CONV2D-k3x3-s1x1-p1x1-d1x1-g1-h56w56-b256-fp16",
        "linear-t0-b1-fp32",
        "",
    ],
)
def test_limits_and_spelling_are_enforced(key: str):
    with pytest.raises(InvalidLayerShape, match="grammar"):
        parse_shape(key)


def test_points_are_checked_against_the_shape():
    dense = parse_shape("conv2d-k3x3-s1x1-p1x1-d1x1-g1-h8w8-b1-fp32")
    dense.check_point(1, 65536)  # a VGG classifier's 25,088 inputs fit
    with pytest.raises(InvalidPoint):
        dense.check_point(0, 8)
    with pytest.raises(InvalidPoint):
        dense.check_point(8, 65537)
    with pytest.raises(InvalidPoint, match="cin == cout"):
        parse_shape("conv2d-k3x3-s1x1-p1x1-d1x1-gdw-h8w8-b1-fp32").check_point(8, 16)
    with pytest.raises(InvalidPoint, match="multiples of 4"):
        parse_shape("conv2d-k3x3-s1x1-p1x1-d1x1-g4-h8w8-b1-fp32").check_point(8, 10)


@pytest.fixture(scope="module")
def client():
    with tempfile.TemporaryDirectory() as d:
        # a tiny memory budget keeps any junk that is accepted cheap to measure
        settings_ = Settings(
            backend="onnxruntime", db=f"sqlite:///{d}/t.db", cache_dir=d, threads=1, memory_fraction=1e-5
        )
        with TestClient(create_app(settings_), raise_server_exceptions=False) as c:
            yield c


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(junk=st.text(min_size=1, max_size=60))
def test_junk_keys_never_give_500(client, junk: str):
    path = f"/lut/{quote(junk, safe='')}"
    for response in (client.get(path), client.post(path, json={"cin": [8], "cout": [8]})):
        assert response.status_code < 500, response.text


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    body=st.recursive(
        st.none() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c) | st.dictionaries(st.sampled_from(["cin", "cout", "points", "x"]), c),
        max_leaves=8,
    )
)
def test_junk_bodies_never_give_500(client, body):
    response = client.post("/lut/linear-t1-b1-fp32", json=body)
    assert response.status_code in (200, 202, 422), response.text
