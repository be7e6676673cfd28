"""rlhf/steps.py: the gradient all-reduce of the no_sync update, bucketed.

A one-process gloo group all-reduces to the same values, so an accelerator that claims two
processes must come out with every gradient halved, element for element, whatever the bucket
size: a bucket boundary that shifted one tensor's values into another's would show here. The
two-process tests (tests/test_distributed.py) check the averaged gradients against one process.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rlhf.steps import average_gradients


@pytest.fixture(scope="module")
def one_process_group():
    assert not torch.distributed.is_initialized()
    torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:29533", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def model_with_grads(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Linear(5, 3), torch.nn.Linear(3, 11))
    model[2].double()                          # a second dtype: its own bucket
    model[1].bias.requires_grad_(False)        # frozen: no gradient, not reduced
    for param in model.parameters():
        if param.requires_grad:
            param.grad = torch.randn_like(param)
    model[0].bias.grad = None                  # trainable without a gradient: reduced as zeros
    return model


@pytest.mark.parametrize("bucket", [1, 6, 40, 2**22])
def test_every_gradient_is_averaged_in_place_whatever_the_bucket(one_process_group, bucket):
    models = [model_with_grads(0), model_with_grads(1)]
    before = [[None if p.grad is None else p.grad.clone() for p in m.parameters()] for m in models]
    average_gradients(SimpleNamespace(num_processes=2), models, bucket=bucket)
    for model, grads in zip(models, before):
        for param, grad in zip(model.parameters(), grads):
            if not param.requires_grad:
                assert param.grad is None
            elif grad is None:
                assert torch.equal(param.grad, torch.zeros_like(param))
            else:
                assert param.grad.dtype == grad.dtype
                torch.testing.assert_close(param.grad, grad / 2, rtol=0, atol=0)


def test_one_process_leaves_the_gradients_alone():
    model = model_with_grads(2)
    before = [p.grad for p in model.parameters()]
    average_gradients(SimpleNamespace(num_processes=1), [model], bucket=1)
    assert all(p.grad is g for p, g in zip(model.parameters(), before))
