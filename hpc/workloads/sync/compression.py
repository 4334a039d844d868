"""Gradient codecs: what a tensor looks like on the wire, Horovod's `Compressor` contract.

A codec is two static methods, `compress(tensor) -> (wire_tensor, ctx)` and
`decompress(wire_tensor, ctx) -> tensor`, so hpc.torch's `Compression.fp16` and the own sync engine's
wire (hpc train --fp16-compress) share one implementation, and a user may pass their own class with
the same two methods. torch is never imported here: the casts use tensor methods only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class Compressor:
    """Interface: compress a tensor for the wire and return it with what decompress needs."""

    @staticmethod
    def compress(tensor: "torch.Tensor") -> tuple["torch.Tensor", Any]:
        raise NotImplementedError

    @staticmethod
    def decompress(tensor: "torch.Tensor", ctx: Any) -> "torch.Tensor":
        raise NotImplementedError


class NoneCompressor(Compressor):
    """No compression: the tensor itself travels (no copy)."""

    @staticmethod
    def compress(tensor: "torch.Tensor") -> tuple["torch.Tensor", Any]:
        return tensor, None

    @staticmethod
    def decompress(tensor: "torch.Tensor", ctx: Any) -> "torch.Tensor":
        return tensor


class FP16Compressor(Compressor):
    """Floating-point tensors travel as float16 (half the bytes); other dtypes unchanged.

    The caller scales before compressing (the own engine pre-divides by the world size), which keeps
    sums of float16 values far from the 65504 overflow.
    """

    @staticmethod
    def compress(tensor: "torch.Tensor") -> tuple["torch.Tensor", Any]:
        if tensor.dtype.is_floating_point:
            return tensor.half(), tensor.dtype
        return tensor, tensor.dtype

    @staticmethod
    def decompress(tensor: "torch.Tensor", ctx: Any) -> "torch.Tensor":
        if ctx is not None and ctx.is_floating_point and tensor.dtype != ctx:
            return tensor.to(ctx)
        return tensor


class Compression:
    """The codecs by name, as `horovod.torch.Compression` spells them."""

    none = NoneCompressor
    fp16 = FP16Compressor


def wire_dtype(codec: Any, tensor: "torch.Tensor") -> "torch.dtype":
    """The dtype `codec` puts on the wire for tensors like `tensor` (found by compressing 0 elements)."""
    return codec.compress(tensor[:0])[0].dtype


def check_codec(codec: Any) -> None:
    """A codec must have callable compress and decompress (catch a wrong object before training)."""
    from hpc.errors import HpcError

    for name in ("compress", "decompress"):
        if not callable(getattr(codec, name, None)):
            raise HpcError(f"compression {codec!r} has no {name}() method: use Compression.none, "
                           "Compression.fp16, or a class with static compress(tensor) -> (tensor, ctx) "
                           "and decompress(tensor, ctx)")
