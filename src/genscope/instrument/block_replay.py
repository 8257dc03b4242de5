"""Counting a repeated block once: a meta-device FLOP count replays module calls it has counted and checked.

A paper-scale pipeline calls the same block on the same shapes many times: the 24 layers of T5-XXL, the
resnets and transformer blocks of one UNet level, and every block again in each denoising step that the step
rule (:mod:`genscope.instrument.flop_steps`) runs. On the meta device a block's counts (FLOPs, softmax FLOPs,
bytes and calls per op and per module below it) and its outputs' shapes depend on nothing but

* the block's structure: its class, every submodule's class, parameter and buffer shapes and dtypes, and
  plain attributes (``heads``, ``eps``, ``up``...; transformers' ``layer_idx``, an index into a KV cache
  passed as an argument, is left out so that identical layers match), with the functions it keeps (which
  one) and the plain attributes of the objects it keeps (a transformers config's activation),
* its arguments: every tensor's shape, stride, dtype and storage offset (all on meta) and every other
  argument's value (numbers, strings, ``None``, tuples and dicts of them),
* whether it runs inside an attention entry-point call (the counter's ``Attention`` class).

:class:`BlockReplay` patches the ``forward`` of every module with two children or more in the counted components. A call
with that key is **recorded** the first time (counted op by op, its rows kept relative to the block's path),
**checked** the second (counted again; the rows and the outputs' metadata must be identical), and
**replayed** from then on: its rows are filed under the calling block's path and fresh meta tensors of the
recorded metadata are returned, without running anything below it. A call is never replayed when any
argument is not described by its metadata (a real tensor, a KV-cache object), an output is not a meta tensor,
the block's state changed during the call (a buffer or tensor attribute replaced, a plain attribute changed),
its ops ran under another phase or step or were filed outside the block's path, or the check found a
difference: such keys always run. The counts stay exact (``tests/test_flops.py`` compares every workload's
tables with and without replay).

Why hand-written: torch has no module-level memo of dispatch-mode results; this is built on the public
``nn.Module`` API (an instance's ``forward`` is an attribute) and :mod:`torch.utils._pytree`, which diffusers
and transformers register their output classes with.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from genscope.instrument.meta_cache import NotKeyable, TensorMeta, arg_key

# attributes that index a block among identical ones without changing what it computes (transformers' index
# into a KV cache, which arrives as an argument and then makes the call unreplayable)
IGNORED_ATTRIBUTES = frozenset({"layer_idx", "forward"})
_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device)
# a block is a module with at least this many children (a GEGLU's one projection, a FeedForward's one list,
# are counted as part of the block around them: each level of recording costs every op below it a check)
MIN_CHILDREN = 2
_MISSING = object()

RowKey = tuple[str, Any, bool]  # (leaf path relative to the block, op packet, inside attention)
Row = list[int]  # flops, softmax_flops, bytes, calls


@dataclass
class _Recording:
    prefix: str  # the block's path
    phase: tuple  # (phase name, step) when the call started
    rows: dict[RowKey, Row] = field(default_factory=dict)  # summed per key, in the order first filed
    valid: bool = True


@dataclass
class _Entry:
    rows: tuple[tuple[RowKey, tuple[int, ...]], ...]
    out_spec: Any
    out_meta: tuple[TensorMeta | Any, ...]
    checked: bool = False

    def same(self, other: _Entry) -> bool:
        return (dict(self.rows), self.out_spec, self.out_meta) == (dict(other.rows), other.out_spec, other.out_meta)


def component_paths(components: dict[str, nn.Module]) -> dict[nn.Module, str]:
    """Every submodule's path from its component's name (a VAE's ``decoder`` called without its root is
    still ``decoder.decoder``): the names the FLOP counter files under."""
    paths: dict[nn.Module, str] = {}
    for name, module in components.items():
        for sub_name, sub in module.named_modules():
            paths[sub] = f"{name}.{sub_name}" if sub_name else name
    return paths


def _attribute(value: Any) -> Any:
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, _PLAIN) for v in value):
        return tuple(value)
    if callable(value) and not isinstance(value, type):  # a function kept on the block: which one it is
        return ("callable", id(getattr(value, "__func__", value)))
    # another object (a transformers config, an attention processor, an enum member): its class and its own
    # plain attributes, one level deep (two configs differing in an activation or attention implementation
    # differ here; the processors genscope installs, which differ only in the site they name, do not)
    fields = getattr(value, "__dict__", None)
    plain = tuple(sorted((k, v) for k, v in fields.items() if isinstance(v, _PLAIN))) if isinstance(fields, dict) else ()
    return type(value).__qualname__, plain


def describe_own(module: nn.Module) -> tuple:
    """A module's own part of a block's structure (see the module docstring), its children left out."""
    attrs = []
    for k, v in vars(module).items():
        if k in IGNORED_ATTRIBUTES or isinstance(v, (dict, nn.Module)):  # hooks, parameters, children
            continue
        if isinstance(v, torch.Tensor):
            attrs.append((k, tuple(v.shape), v.dtype))
        else:
            attrs.append((k, _attribute(v)))
    tensors = [(n, tuple(t.shape), t.dtype)
               for n, t in (*module._parameters.items(), *module._buffers.items()) if t is not None]
    return type(module).__module__, type(module).__qualname__, tuple(attrs), tuple(tensors)


def module_state(modules: list[nn.Module]) -> list[int]:
    """The identity of every attribute, parameter and buffer of a block's modules: a call that changes it
    (a tensor replaced, a number reassigned, even to an equal value) keeps state and is never replayed."""
    ids = []
    for sub in modules:
        ids += map(id, vars(sub).values())
        ids += map(id, sub._parameters.values())
        ids += map(id, sub._buffers.values())
    return ids


def _describe_output(out: Any) -> tuple[Any, tuple] | None:
    leaves, spec = tree_flatten(out)
    described = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            if leaf.device.type != "meta":
                return None
            described.append(TensorMeta(tuple(leaf.shape), leaf.stride(), leaf.dtype))
        elif isinstance(leaf, _PLAIN):
            described.append(leaf)
        else:
            return None
    return spec, tuple(described)


class BlockReplay:
    """``with BlockReplay(modules, path_of, replay, phase_key):`` replays checked block calls.

    ``path_of(module)``: the module's path; ``replay(rows, prefix)``: a replayed call's rows
    ``[((leaf relative to the block, packet, in attention), (flops, softmax flops, bytes, calls))]``, to be
    filed under the block at ``prefix`` as if its ops had run; ``phase_key()``: the current (phase, step);
    ``context()``: anything else a call's result depends on (the counter: inside an attention call). The
    counter calls :meth:`observe` for every op it files (replayed ones too, so that enclosing recordings see
    them).

    Used by the FLOP counter only: the sequence-length tracer runs two steps of a loop (recorded, checked),
    so little would be replayed, and its ops are cheap enough (no counting mode above the meta cache) that
    the keys and checks cost as much as they save (measured: 0.7-1.3x per workload, no gain in total).
    """

    def __init__(self, modules: Iterable[nn.Module], path_of: Callable[[nn.Module], str],
                 replay: Callable[[tuple, str], None], phase_key: Callable[[], tuple],
                 context: Callable[[], Any] = lambda: None) -> None:
        self._modules = list(modules)
        self._path_of, self._file_rows = path_of, replay
        self._phase_key, self._context = phase_key, context
        self.entries: dict[tuple, _Entry | None] = {}  # None: a key that always runs
        # a structure is numbered once (bottom up: each module described once), so a call's key hashes a number
        self._structure_ids: dict[tuple, int] = {}  # (own part, ((child name, child's number), ...)) -> number
        self._structure: dict[int, int] = {}  # id(module) -> its structure's number
        self._subtree: dict[int, list[nn.Module]] = {}  # id(module) -> its modules (for module_state)
        self._recording: list[_Recording] = []
        self._patched: list[nn.Module] = []
        self.replaying = False  # creating a replayed call's outputs: the counter ignores those ops
        self.replays = 0  # block calls answered without running

    def __enter__(self) -> BlockReplay:
        seen: set[int] = set()
        for module in self._modules:
            if id(module) in seen or "forward" in vars(module) or len(module._modules) < MIN_CHILDREN:
                continue  # leaves and thin wrappers: a few ops, less to save than a key costs; or an instance
                # forward someone else set
            seen.add(id(module))
            try:
                module.forward = self._wrap(module, module.forward)
            except (AttributeError, TypeError):  # a scripted module, a forward that cannot be set: always runs
                continue
            self._patched.append(module)
        return self

    def _wrap(self, module: nn.Module, original: Callable) -> Callable:
        @functools.wraps(original)  # inspect.signature (transformers reads it) still sees the real one
        def forward(*args, **kwargs):
            return self._call(module, original, args, kwargs)

        return forward

    def __exit__(self, *exc) -> None:
        for module in self._patched:
            del module.forward
        self._patched = []

    # -- the counter's side --------------------------------------------------------------------------------
    def _open(self, leaf: str):
        """(recording, leaf relative to its block) for every open, still valid recording."""
        phase = self._phase_key()
        for rec in self._recording:
            if not rec.valid:
                continue
            if leaf == rec.prefix:
                rel = ""
            elif leaf.startswith(rec.prefix) and leaf[len(rec.prefix):len(rec.prefix) + 1] == ".":
                rel = leaf[len(rec.prefix) + 1:]
            else:  # filed outside the block (it called a module that is not its own)
                rec.valid = False
                continue
            if phase != rec.phase:  # a block's call runs within one phase and step
                rec.valid = False
                continue
            yield rec, rel

    def observe(self, leaf: str, packet: Any, in_attention: bool, values: tuple[int, int, int, int]) -> None:
        """An op (or a replayed row) was filed under ``leaf``: every open recording adds it to its rows."""
        if not self._recording:
            return
        for rec, rel in self._open(leaf):
            row = rec.rows.get((rel, packet, in_attention))
            if row is None:
                row = rec.rows[(rel, packet, in_attention)] = [0, 0, 0, 0]
            for i in range(4):
                row[i] += values[i]

    # -- a block call ----------------------------------------------------------------------------------------
    def _structure_of(self, module: nn.Module) -> int:
        number = self._structure.get(id(module))
        if number is None:
            children = tuple((name, self._structure_of(child)) for name, child in module._modules.items()
                             if child is not None)
            number = self._structure_ids.setdefault((describe_own(module), children), len(self._structure_ids))
            self._structure[id(module)] = number
        return number

    def _state(self, module: nn.Module) -> list[int]:
        modules = self._subtree.get(id(module))
        if modules is None:
            modules = self._subtree[id(module)] = list(module.modules())
        return module_state(modules)

    def _key(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        structure = self._structure_of(module)
        seen = [False]
        try:
            described = (arg_key(args, False, seen), arg_key(kwargs, False, seen))
        except NotKeyable:
            return None
        return (structure, self._context(), described) if seen[0] else None

    def _call(self, module: nn.Module, original: Callable, args: tuple, kwargs: dict) -> Any:
        key = self._key(module, args, kwargs)
        entry = self.entries.get(key, _MISSING) if key is not None else None
        if entry is None:
            return original(*args, **kwargs)
        if entry is not _MISSING and entry.checked:
            return self._replay(module, entry)
        state = self._state(module)
        recording = _Recording(prefix=self._path_of(module), phase=self._phase_key())
        self._recording.append(recording)
        try:
            out = original(*args, **kwargs)
        finally:
            self._recording.pop()
        described = _describe_output(out)
        if not recording.valid or described is None or self._state(module) != state:
            self.entries[key] = None
            return out
        rows = tuple((k, tuple(v)) for k, v in recording.rows.items())  # in the order the ops ran
        new = _Entry(rows, *described)
        if entry is _MISSING:
            self.entries[key] = new
        elif entry.same(new):
            entry.checked = True
        else:
            self.entries[key] = None
        return out

    def _replay(self, module: nn.Module, entry: _Entry) -> Any:
        self._file_rows(entry.rows, self._path_of(module))
        self.replaying = True
        try:
            leaves = [torch.empty_strided(d.shape, d.stride, dtype=d.dtype, device="meta")
                      if isinstance(d, TensorMeta) else d for d in entry.out_meta]
        finally:
            self.replaying = False
        self.replays += 1
        return tree_unflatten(leaves, entry.out_spec)
