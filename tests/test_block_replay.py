"""Block replay in a meta-device FLOP count: repeated calls counted once, checked once, replayed, and never
replayed where a block keeps state, takes an object, or its check differs; the counts equal a full count."""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from genscope.instrument.flop_counter import FlopCounter


class Mlp(nn.Module):
    def __init__(self, width: int, scale: float = 1.0):
        super().__init__()
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)
        self.scale = scale

    def forward(self, x, cache=None):
        return self.down(torch.relu(self.up(x))) * self.scale + x


class Growing(Mlp):
    """Keeps what it saw, as a KV cache in a module would."""

    def __init__(self, width: int):
        super().__init__(width)
        self.seen = torch.zeros(0, width, device="meta")

    def forward(self, x, cache=None):
        self.seen = torch.cat([self.seen, x.flatten(0, -2)])
        return super().forward(x) + self.seen.sum()


class Wider(Mlp):
    """Same structure, but its class-level rule doubles the work: the check must catch it."""
    calls = 0

    def forward(self, x, cache=None):
        type(self).calls += 1
        y = super().forward(x)
        return super().forward(y) if type(self).calls == 2 else y


def count(model: nn.Module, x: torch.Tensor, memoize: bool, **kwargs) -> tuple[pd.DataFrame, FlopCounter]:
    model = model.to("meta").eval()
    with torch.inference_mode(), FlopCounter({"model": model}, memoize=memoize) as counter:
        model(x, **kwargs) if not isinstance(model, nn.Sequential) else model(x)
    return counter.table(), counter


def stack(block, n: int = 5) -> nn.Module:
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(block() for _ in range(n))

        def forward(self, x, cache=None):
            for b in self.blocks:
                x = b(x, cache=cache)
            return x

    return Stack()


def test_identical_blocks_are_recorded_checked_then_replayed_and_count_exactly():
    x = torch.empty(2, 7, 16, device="meta")
    fast, counter = count(stack(lambda: Mlp(16)), x, memoize=True)
    exact, full = count(stack(lambda: Mlp(16)), x, memoize=False)
    assert counter.block_replay.replays == 3  # block 0 recorded, block 1 checked, blocks 2-4 replayed
    assert full.block_replay is None
    pd.testing.assert_frame_equal(fast, exact)
    # a replayed block is filed under its own path, with the FLOPs of its two GEMMs: 2 x (2*7) x 16 x 64 each
    mine = fast[fast["module"].str.startswith("model.blocks.4.")]
    assert mine["flops"].sum() == 2 * (2 * 2 * 7 * 16 * 64)
    assert counter.get_total_flops() == full.get_total_flops() == 5 * 2 * (2 * 2 * 7 * 16 * 64)


def test_a_block_whose_attribute_differs_is_not_replayed_for_it():
    x = torch.empty(3, 16, device="meta")
    model = stack(lambda: Mlp(16))
    model.blocks[3].scale = 2.0  # another plain attribute: another key
    _, counter = count(model, x, memoize=True)
    assert counter.block_replay.replays == 2  # blocks 2 and 4; block 3 recorded under its own key


def test_a_block_that_keeps_state_is_never_replayed():
    x = torch.empty(3, 16, device="meta")
    fast, counter = count(stack(lambda: Growing(16)), x, memoize=True)
    exact, _ = count(stack(lambda: Growing(16)), x, memoize=False)
    assert counter.block_replay.replays == 0
    pd.testing.assert_frame_equal(fast, exact)


def test_a_call_with_an_object_argument_is_never_replayed():
    x = torch.empty(3, 16, device="meta")
    _, counter = count(stack(lambda: Mlp(16)), x, memoize=True, cache=object())
    assert counter.block_replay.replays == 0


def test_the_check_stops_replay_when_the_second_call_differs():
    x = torch.empty(3, 16, device="meta")
    Wider.calls = 0
    fast, counter = count(stack(lambda: Wider(16)), x, memoize=True)
    Wider.calls = 0
    exact, _ = count(stack(lambda: Wider(16)), x, memoize=False)
    assert counter.block_replay.replays == 0  # the second call ran the MLP twice: the key always runs
    pd.testing.assert_frame_equal(fast, exact)
    assert counter.get_total_flops() == 6 * 2 * (2 * 3 * 16 * 64)  # five blocks, the second one twice


class Settings:
    def __init__(self, double: bool):
        self.double = double


class Configured(Mlp):
    """Its work depends on a setting held in an object (as transformers layers read ``self.config``)."""

    def __init__(self, width: int, double: bool):
        super().__init__(width)
        self.settings = Settings(double)

    def forward(self, x, cache=None):
        y = super().forward(x)
        return super().forward(y) if self.settings.double else y


def test_blocks_whose_settings_objects_differ_do_not_share_a_recording():
    x = torch.empty(3, 16, device="meta")
    blocks = [False, False, False, True, True]  # the last two do twice the work: never replayed from the first
    model = stack(lambda: None, n=0)
    model.blocks = nn.ModuleList(Configured(16, double) for double in blocks)
    fast, counter = count(model, x, memoize=True)
    exact, _ = count(model, x, memoize=False)
    pd.testing.assert_frame_equal(fast, exact)
    assert counter.block_replay.replays == 1  # the third plain block; the two doubling ones: recorded, checked
    assert counter.get_total_flops() == 7 * 2 * (2 * 3 * 16 * 64)
