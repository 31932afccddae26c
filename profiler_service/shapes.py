"""Layer-shape keys (SPEC 3): the one parse/format pair shared by service and client.

A key names everything that fixes a layer's latency except its two channel
counts, which are the axes of its table. It is canonical: ``format_shape``
of a parsed key gives back the same string, so two spellings of one layer
can never become two tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Dtype = Literal["fp32", "fp16", "bf16", "int8"]
DTYPES: tuple[Dtype, ...] = ("fp32", "fp16", "bf16", "int8")
DTYPE_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}

GRAMMAR = (
    "conv2d-k{KH}x{KW}-s{SH}x{SW}-p{PH}x{PW}-d{DH}x{DW}-g{G|dw}-h{H}w{W}-b{B}-{dtype} | "
    "linear-t{T}-b{B}-{dtype}; dtype: fp32|fp16|bf16|int8; numbers without leading zeros; "
    "example: conv2d-k3x3-s1x1-p1x1-d1x1-g1-h56w56-b256-fp16"
)

# Limits of SPEC 3 (inclusive ranges).
MAX_CHANNELS = 65536  # a VGG classifier's input is 25,088
MAX_SPATIAL = 4096
MAX_BATCH = 4096
MAX_KERNEL = 32  # patch embeddings: 16x16 and 32x32 kernels
MAX_STRIDE = 32
MAX_DILATION = 16
MAX_PADDING = 64
MAX_TOKENS = 65536
MAX_POINTS_PER_REQUEST = 10_000

_N = r"(0|[1-9][0-9]{0,5})"  # canonical non-negative integer, bounded length
_CONV_RE = re.compile(
    rf"conv2d-k{_N}x{_N}-s{_N}x{_N}-p{_N}x{_N}-d{_N}x{_N}-g(dw|{_N})-h{_N}w{_N}-b{_N}-(fp32|fp16|bf16|int8)"
)
_LINEAR_RE = re.compile(rf"linear-t{_N}-b{_N}-(fp32|fp16|bf16|int8)")


class InvalidLayerShape(ValueError):
    """A key that does not follow the grammar or breaks a limit."""

    grammar = GRAMMAR


class InvalidPoint(ValueError):
    """A (cin, cout) pair that the layer shape cannot take."""


@dataclass(frozen=True, slots=True)
class LayerShape:
    """Everything but the channel counts; ``groups == 0`` means depthwise."""

    op: Literal["conv2d", "linear"]
    batch: int
    dtype: Dtype
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    height: int = 1
    width: int = 1
    tokens: int = 1

    @property
    def depthwise(self) -> bool:
        return self.op == "conv2d" and self.groups == 0

    @property
    def key(self) -> str:
        return format_shape(self)

    def output_hw(self) -> tuple[int, int]:
        if self.op == "linear":
            return (1, 1)
        out = []
        for size, k, s, p, d in zip(
            (self.height, self.width), self.kernel, self.stride, self.padding, self.dilation, strict=True
        ):
            out.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
        return out[0], out[1]

    def conv_groups(self, cin: int) -> int:
        """Groups argument of the conv for this input channel count."""
        return cin if self.depthwise else self.groups

    def check_point(self, cin: int, cout: int) -> None:
        for name, c in (("cin", cin), ("cout", cout)):
            if not 1 <= c <= MAX_CHANNELS:
                raise InvalidPoint(f"{name}={c} outside 1..{MAX_CHANNELS}")
        if self.depthwise and cin != cout:
            raise InvalidPoint(f"depthwise layer needs cin == cout, got ({cin}, {cout})")
        if self.op == "conv2d" and self.groups > 1 and (cin % self.groups or cout % self.groups):
            raise InvalidPoint(
                f"grouped conv g{self.groups} needs cin and cout multiples of {self.groups}, got ({cin}, {cout})"
            )

    def tensor_bytes(self, cin: int, cout: int) -> int:
        """Bytes of input, weights and output of one point: what must fit the device."""
        elt = DTYPE_BYTES[self.dtype]
        if self.op == "linear":
            rows = self.batch * self.tokens
            return elt * (rows * cin + cin * cout + rows * cout + cout)
        oh, ow = self.output_hw()
        kh, kw = self.kernel
        per_group_in = 1 if self.depthwise else cin // max(self.groups, 1)
        weights = cout * per_group_in * kh * kw
        return elt * (self.batch * cin * self.height * self.width + weights + self.batch * cout * oh * ow + cout)

    def macs(self, cin: int, cout: int) -> int:
        """Multiply-accumulates of one forward pass (the FLOPs proxy of baselines)."""
        if self.op == "linear":
            return self.batch * self.tokens * cin * cout
        oh, ow = self.output_hw()
        per_group_in = 1 if self.depthwise else cin // max(self.groups, 1)
        return self.batch * cout * oh * ow * per_group_in * self.kernel[0] * self.kernel[1]


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise InvalidLayerShape(f"{what}; grammar: {GRAMMAR}")


def parse_shape(key: str) -> LayerShape:
    """Parse a canonical key, enforcing the limits of SPEC 3."""
    if not isinstance(key, str) or len(key) > 128:
        raise InvalidLayerShape(f"not a layer shape key; grammar: {GRAMMAR}")
    if m := _LINEAR_RE.fullmatch(key):
        tokens, batch, dtype = int(m[1]), int(m[2]), m[3]
        _check(1 <= tokens <= MAX_TOKENS, f"tokens t{tokens} outside 1..{MAX_TOKENS}")
        _check(1 <= batch <= MAX_BATCH, f"batch b{batch} outside 1..{MAX_BATCH}")
        return LayerShape(op="linear", batch=batch, dtype=dtype, tokens=tokens)  # type: ignore[arg-type]
    m = _CONV_RE.fullmatch(key)
    _check(m is not None, f"malformed layer shape {key!r}")
    assert m is not None
    kh, kw, sh, sw, ph, pw, dh, dw = (int(m[i]) for i in range(1, 9))
    groups = 0 if m[9] == "dw" else int(m[9])
    height, width, batch, dtype = int(m[11]), int(m[12]), int(m[13]), m[14]
    _check(1 <= kh <= MAX_KERNEL and 1 <= kw <= MAX_KERNEL, f"kernel outside 1..{MAX_KERNEL}")
    _check(1 <= sh <= MAX_STRIDE and 1 <= sw <= MAX_STRIDE, f"stride outside 1..{MAX_STRIDE}")
    _check(ph <= MAX_PADDING and pw <= MAX_PADDING, f"padding outside 0..{MAX_PADDING}")
    _check(1 <= dh <= MAX_DILATION and 1 <= dw <= MAX_DILATION, f"dilation outside 1..{MAX_DILATION}")
    _check(m[9] == "dw" or 1 <= groups <= MAX_CHANNELS, f"groups outside 1..{MAX_CHANNELS} (or dw)")
    _check(1 <= height <= MAX_SPATIAL and 1 <= width <= MAX_SPATIAL, f"spatial outside 1..{MAX_SPATIAL}")
    _check(1 <= batch <= MAX_BATCH, f"batch b{batch} outside 1..{MAX_BATCH}")
    shape = LayerShape(
        op="conv2d",
        batch=batch,
        dtype=dtype,  # type: ignore[arg-type]
        kernel=(kh, kw),
        stride=(sh, sw),
        padding=(ph, pw),
        dilation=(dh, dw),
        groups=groups,
        height=height,
        width=width,
    )
    oh, ow = shape.output_hw()
    _check(oh >= 1 and ow >= 1, f"kernel larger than padded input gives an empty output ({oh}x{ow})")
    return shape


def format_shape(shape: LayerShape) -> str:
    if shape.op == "linear":
        return f"linear-t{shape.tokens}-b{shape.batch}-{shape.dtype}"
    g = "dw" if shape.groups == 0 else str(shape.groups)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = shape.kernel, shape.stride, shape.padding, shape.dilation
    return (
        f"conv2d-k{kh}x{kw}-s{sh}x{sw}-p{ph}x{pw}-d{dh}x{dw}-g{g}"
        f"-h{shape.height}w{shape.width}-b{shape.batch}-{shape.dtype}"
    )
