"""A cache of meta-device op outputs: each distinct op call on meta tensors runs its meta kernel once.

On the meta device an op computes nothing but its outputs' shapes, strides and dtypes, and those depend on
nothing but its inputs' metadata and its other arguments. torch's meta kernels are mostly Python (the
``torch._refs`` / ``_prims`` decompositions): about 0.2-1 ms per op, which is what a paper-scale count of a
whole pipeline spends its time on. :class:`MetaOpCache` runs each distinct call once and answers later
identical calls with fresh meta tensors of the recorded metadata (tens of microseconds), so a second UNet
forward, or the 16th identical transformer block, costs a fraction of the first.

Counting is unaffected: the FLOP counter's dispatch mode sees and counts every op, and runs each through
:meth:`MetaOpCache.run` (called directly: one Python dispatch per op, not a second mode stacked under the
counter's); the sequence-length tracer enters it as a mode of its own. Only calls that cannot change
anything but their own outputs are cached:

* every tensor argument is on the meta device, except 0-dim CPU tensors in pointwise ops (a scheduler's
  alpha: its dtype takes part in type promotion, its value decides nothing of the output's metadata);
* the op is not a view (outputs would lose their aliasing), not in-place or ``out=`` (``Tag.inplace``,
  ``Tag.out``), has no data-dependent output shape (random ops are cached: on meta they draw nothing);
* every output is a meta tensor at storage offset 0.

Why hand-written: torch has no such cache (``FakeTensorMode``'s dispatch cache serves fake tensors, not
meta tensors under another mode). Built on ``TorchDispatchMode``, the extension point torch documents for
intercepting ATen ops ("Extending PyTorch: extending all of torch with modes").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

# random ops are cached too: on meta they draw nothing (``scaled_dot_product_attention`` is tagged random for
# its dropout)
# (tags an older torch does not define are left out: torch 2.11 has no ``inplace``/``out``; the schema's
# mutability below catches those ops there)
_UNCACHED_TAGS = frozenset(tag for tag in (getattr(torch.Tag, name, None) for name in (
    "inplace", "inplace_view", "out", "out_variant", "dynamic_output_shape", "data_dependent_output",
    "maybe_aliasing_or_mutating")) if tag is not None)
_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device, torch.memory_format, torch.layout)
CACHE_LIMIT = 200_000  # distinct calls kept (a paper-scale suite has a few thousand)


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype


class NotKeyable(Exception):
    """An argument whose metadata does not describe it (a real tensor, an object): the call is not cached."""


def arg_key(value: Any, pointwise: bool, seen: list[bool]) -> Any:
    """Hashable description of one argument (``seen[0]``: a meta tensor was met); raises NotKeyable."""
    if isinstance(value, torch.Tensor):
        if value.device.type == "meta":
            seen[0] = True
            return (tuple(value.shape), value.stride(), value.dtype, value.storage_offset())
        if pointwise and value.dim() == 0 and value.device.type == "cpu":
            return ("cpu scalar", value.dtype)
        raise NotKeyable
    if isinstance(value, (list, tuple)):
        return tuple(arg_key(v, pointwise, seen) for v in value)
    if isinstance(value, dict):  # a module's keyword arguments (``cross_attention_kwargs``)
        return tuple(sorted((str(k), arg_key(v, pointwise, seen)) for k, v in value.items()))
    if isinstance(value, _PLAIN):
        return value
    raise NotKeyable


# One table for the whole process: a key is the op and every argument's metadata, so an answer holds for any
# model - the FLOP counts, the float16 recount and the sequence-length trace of a workload share their ops.
_SHARED_OUTPUTS: dict[tuple, tuple] = {}


class MetaDispatchMode(TorchDispatchMode):
    """A dispatch mode that never runs under ``torch.compile``: its ``__torch_dispatch__`` is left as written.

    torch wraps every mode's ``__torch_dispatch__`` in ``torch._disable_dynamo`` (four eval-frame switches per
    op call) unless the class's ``_should_skip_dynamo()`` says False, the opt-out torch documents on
    ``TorchDispatchMode._should_skip_dynamo`` for modes that are not traced. genscope's counting and caching
    modes run eagerly (a meta-device count or trace; a FLOP count of an eager model); without the wrapper a
    paper-scale count of the eight workloads took 9.0-9.3 s instead of 10.5-11.3 s (this VM, two runs each).
    With a torch that has no such hook the classmethod is simply never asked."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False


class MetaOpCache(MetaDispatchMode):
    """``with MetaOpCache():`` identical meta-device op calls run once (see the module docstring); the answers
    are kept for the process (``shared=False``: for this instance only)."""

    def __init__(self, shared: bool = True) -> None:
        super().__init__()
        # call key -> (structure, [TensorMeta])
        self.outputs: dict[tuple, tuple] = _SHARED_OUTPUTS if shared else {}
        self.hits = 0
        self._cacheable: dict[Any, tuple[bool, bool]] = {}  # op -> (cacheable, pointwise)
        # (key, id of the output) of the call just answered, None after an uncached one: what the FLOP counter
        # caches the op's counts under. Only the id: a mode keeping a reference to an op's output makes torch
        # dispatch an extra ``detach`` of it.
        self.last: tuple[tuple, int] | None = None

    def _kind(self, func) -> tuple[bool, bool]:
        kind = self._cacheable.get(func)
        if kind is None:
            tags = set(func.tags)
            kind = (not func.is_view and not func._schema.is_mutable and not tags & _UNCACHED_TAGS,
                    torch.Tag.pointwise in tags)
            self._cacheable[func] = kind
        return kind

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return self.run(func, args, kwargs or {})

    def run(self, func, args: tuple, kwargs: dict):
        """``func(*args, **kwargs)``, answered from the cache where it can be (what the mode does for each op;
        a dispatch mode of its own calls this directly instead of stacking this mode under it)."""
        self.last = None
        cacheable, pointwise = self._kind(func)
        if not cacheable:
            return func(*args, **kwargs)
        seen = [False]
        try:
            key = (func, arg_key(args, pointwise, seen), tuple((k, arg_key(v, pointwise, seen)) for k, v in kwargs.items()))
        except NotKeyable:
            return func(*args, **kwargs)
        if not seen[0]:  # no meta tensor: a real computation, its values matter
            return func(*args, **kwargs)
        hit = self.outputs.get(key)
        if hit is not None:
            self.hits += 1
            spec, described = hit
            out = tree_unflatten([torch.empty_strided(d.shape, d.stride, dtype=d.dtype, device="meta")
                                  for d in described], spec)
            self.last = (key, id(out))
            return out
        out = func(*args, **kwargs)
        leaves, spec = tree_flatten(out)
        if all(isinstance(t, torch.Tensor) and t.device.type == "meta" and t.storage_offset() == 0 for t in leaves):
            if len(self.outputs) >= CACHE_LIMIT:
                self.outputs.clear()
            self.outputs[key] = (spec, [TensorMeta(tuple(t.shape), t.stride(), t.dtype) for t in leaves])
            self.last = (key, id(out))
        return out
