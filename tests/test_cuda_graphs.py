"""The ``cuda_graphs`` pass: which modules it graphs, its refusals (CPU), and replay = eager (CUDA only)."""

from __future__ import annotations

import pytest
import torch
from helpers import run_unet, tiny_unet

from genscope.errors import UserError
from genscope.passes import PassConfig, apply
from genscope.passes.cuda_graphs import GraphedBlock, graphed_class, is_block
from genscope.passes.oracle import relative_error


def test_block_paths_are_the_outermost_blocks_of_unets_and_dits():
    assert is_block("down_blocks.0") and is_block("up_blocks.3") and is_block("mid_block")
    assert is_block("transformer_blocks.7") and is_block("single_transformer_blocks.0")
    assert is_block("down_blocks.1.attentions.0.transformer_blocks.0")  # nested: the pass keeps the outermost
    assert not is_block("down_blocks") and not is_block("conv_in") and not is_block("down_blocks.0.resnets.1")


def test_cpu_model_is_refused_and_a_graphed_class_runs_eagerly_off_cuda():
    unet, args, kwargs = tiny_unet()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(UserError, match="CUDA"):
        apply(unet, PassConfig(passes=("cuda_graphs",)))
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())  # untouched
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 4)
    graphed = graphed_class(torch.nn.Linear)
    assert issubclass(graphed, GraphedBlock) and issubclass(graphed, torch.nn.Linear)
    from genscope.passes.base import shallow_clone

    clone = shallow_clone(linear, graphed)
    x = torch.randn(3, 8)
    assert torch.equal(clone(x), linear(x)) and not clone.__dict__.get("_graphs")  # CPU tensors: eager, nothing captured


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graph_replay_equals_eager_and_follows_new_inputs_and_shapes():
    unet, args, kwargs = tiny_unet()
    unet = unet.cuda().half()
    sample, timestep = args[0].cuda(), args[1].cuda()
    kwargs = {"encoder_hidden_states": kwargs["encoder_hidden_states"].cuda()}
    eager = run_unet(unet, (sample, timestep), kwargs)
    log = apply(unet, PassConfig(passes=("cuda_graphs",), example_inputs=(sample, timestep), example_kwargs=kwargs,
                                 measure=False))
    paths = {s.path for s in log}
    blocks = {p for p, _ in unet.named_modules() if p.count(".") == 1 and p.split(".")[0] in ("down_blocks", "up_blocks")}
    assert blocks | {"mid_block"} == paths
    assert all(r.ok for r in log.oracle)
    graphed = run_unet(unet, (sample, timestep), kwargs)
    assert relative_error(graphed, eager) < 2e-3
    # new values in the same shapes: the static inputs are refilled, not stale
    other = torch.randn_like(sample)
    for s in log:
        s.undo()
    eager_other = run_unet(unet, (other, timestep), kwargs)
    for s in log:
        s.redo()
    assert relative_error(run_unet(unet, (other, timestep), kwargs), eager_other) < 2e-3
    # a new batch size captures a second graph per block
    big = torch.randn(4, *sample.shape[1:], device="cuda")
    run_unet(unet, (big, timestep), {"encoder_hidden_states": kwargs["encoder_hidden_states"].repeat(2, 1, 1)})
    assert all(len(unet.get_submodule(p).__dict__["_graphs"]) == 2 for p in paths)
