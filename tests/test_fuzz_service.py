"""Property-based requests against a live service: no 5xx and no hang, whatever the request says.

A bounded number of examples per endpoint (CI runs them on a fixed seed, see
conftest); each request has a 20 s timeout, so a hang fails the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import hostile_models as hm
from tests.conftest import ServiceProcess

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SHAPES = st.sampled_from(
    [
        "conv2d-k3x3-s1x1-p1x1-d1x1-g1-h8w8-b1-fp32",
        "conv2d-k3x3-s1x1-p1x1-d1x1-gdw-h8w8-b1-fp32",
        "conv2d-k3x3-s2x2-p1x1-d1x1-g4-h8w8-b1-fp32",
        "linear-t1-b1-fp32",
        "conv2d-k15x15-s1x1-p7x7-d1x1-g1-h4096w4096-b4096-fp32",
    ]
) | st.text(max_size=40)
CHANNEL_TEXT = st.one_of(
    st.text(alphabet="0123456789.,:-x ", max_size=24),
    st.builds(lambda a, b, s: f"{a}..{b}:{s}", st.integers(-5, 10**12), st.integers(-5, 10**12), st.integers(-1, 99)),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=5),
    lambda c: st.lists(c, max_size=6) | st.dictionaries(st.sampled_from(["cin", "cout", "points", "x"]), c),
    max_leaves=12,
)
BODIES = JSON | st.fixed_dictionaries(
    {"cin": st.lists(st.integers(-3, 20000), max_size=50), "cout": st.lists(st.integers(-3, 20000), max_size=50)}
)
MODELS = st.sampled_from([hm.conv_3x8x8(), hm.dynamic_relu(), hm.expand(1 << 30), b"", b"\x08\x01garbage"]) | st.binary(
    max_size=64
)
INPUT_SHAPES = (
    st.none()
    | st.text(alphabet='0123456789x{}[]":, nope', max_size=30)
    | st.sampled_from(
        ["1x3x8x8", "1x3x8", "0x3x8x8", '{"x": [1, 3, 8, 8]}', '{"x": [true]}', '{"x": "1x3"}', "99999999x3x8x8"]
    )
)


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[httpx.Client]:
    env = {"HALP_WORKER_MEMORY_MB": "1536", "HALP_POINT_DEADLINE_S": "5", "HALP_MEMORY_FRACTION": "0.001"}
    svc = ServiceProcess(db=tmp_path_factory.mktemp("fuzz") / "halp.db", env=env).start()
    with httpx.Client(base_url=svc.url, timeout=20) as c:
        yield c
    svc.stop()


def ok(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.request.method, response.request.url, response.text[:300])


@FUZZ
@given(shape=SHAPES, cin=st.none() | CHANNEL_TEXT, cout=st.none() | CHANNEL_TEXT)
def test_get_lut(client, shape, cin, cout):
    params = {k: v for k, v in (("cin", cin), ("cout", cout)) if v is not None}
    ok(client.get(f"/lut/{quote(shape, safe='')}", params=params))


@FUZZ
@given(shape=SHAPES, body=BODIES)
def test_post_lut(client, shape, body):
    r = client.post(f"/lut/{quote(shape, safe='')}", json=body)
    ok(r)
    if r.status_code == 202:  # whatever was accepted can be cancelled again
        ok(client.delete(r.headers["location"]))


@FUZZ
@given(model=MODELS, input_shape=INPUT_SHAPES)
def test_post_measure(client, model, input_shape):
    data = {"input_shape": input_shape} if input_shape is not None else {}
    ok(client.post("/measure", files={"model": ("m.onnx", model)}, data=data))


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=st.sampled_from(["/healthz", "/device", "/luts", "/metrics", "/measure", "/jobs/", "/lut/"])
    | st.text(max_size=20).map(lambda t: "/" + quote(t, safe="")),
    suffix=st.text(max_size=12).map(lambda t: quote(t, safe="")),
    body=st.binary(max_size=64),
)
def test_any_method_any_path(client, method, path, suffix, body):
    ok(client.request(method, path + (suffix if path.endswith("/") else ""), content=body))
