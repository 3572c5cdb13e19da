"""``privacy.dp.ghost_backward`` gives exactly the gradients of Opacus' own ghost-clipping backward.

The reference is Opacus: the same wrapped model, batch and loss, once through
``DPTensorFastGradientClipping.backward`` and once through ``ghost_backward``; clipped, summed
gradients (before noise) must agree, and the clipping must be active (some examples clipped).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset
from transformers import BertConfig, BertForSequenceClassification

from privacy.dp import _lean_pass_inputs, ghost_backward


def _wrapped(model: torch.nn.Module, ids, labels, max_grad_norm: float):
    warnings.filterwarnings("ignore", message=".*(secure|Full backward hook|Optimal order).*")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loader = DataLoader(TensorDataset(ids, labels), batch_size=len(ids))
    module, optimizer, criterion, _ = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=optimizer, data_loader=loader, criterion=torch.nn.CrossEntropyLoss(),
        noise_multiplier=0.0, max_grad_norm=max_grad_norm, poisson_sampling=False, grad_sample_mode="ghost")
    return module, optimizer, criterion


FULL_FIRST_PASSES: list[int] = []


def _grads(model, ids, labels, *, lean: bool, max_grad_norm: float = 0.05) -> dict[str, torch.Tensor]:
    module, _, criterion = _wrapped(copy.deepcopy(model), ids, labels, max_grad_norm)
    loss = criterion(module(**_inputs(ids)).logits, labels)
    backward = torch.Tensor.backward

    def spy(tensor, *args, **kwargs):
        FULL_FIRST_PASSES.append(int(bool(kwargs.get("retain_graph"))))
        return backward(tensor, *args, **kwargs)

    FULL_FIRST_PASSES.clear()
    torch.Tensor.backward = spy
    try:
        ghost_backward(loss) if lean else loss.backward()
    finally:
        torch.Tensor.backward = backward
    norms = module.get_norm_sample()
    assert (norms > max_grad_norm).any()  # the clipping is active
    return {n: p.grad.clone() for n, p in module._module.named_parameters() if p.requires_grad}


def _inputs(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    if ids.dtype != torch.long:
        return {"input_ids": ids}
    # Opacus' embedding norm needs per-example position and token-type ids (no broadcast rows).
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids),
            "position_ids": torch.arange(ids.shape[1]).repeat(len(ids), 1)}


def _tiny_bert(*, freeze_embeddings: bool = False) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=32, num_labels=2)
    model = BertForSequenceClassification(config).train()
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if freeze_embeddings and isinstance(module, torch.nn.Embedding):
            module.weight.requires_grad_(False)
    return model


@pytest.mark.parametrize("freeze_embeddings", [False, True])
def test_ghost_backward_equals_opacus_on_a_transformer(freeze_embeddings):
    model = _tiny_bert(freeze_embeddings=freeze_embeddings)
    generator = torch.Generator().manual_seed(1)
    ids, labels = torch.randint(1, 60, (8, 11), generator=generator), torch.randint(0, 2, (8,), generator=generator)
    reference = _grads(model, ids, labels, lean=False)
    lean = _grads(model, ids, labels, lean=True)
    assert sum(FULL_FIRST_PASSES) == 0  # the light pass reached every layer: no fallback
    assert reference.keys() == lean.keys() and len(reference) > 10
    for name in reference:
        torch.testing.assert_close(lean[name], reference[name], rtol=1e-5, atol=1e-7, msg=name)


def test_a_layer_the_light_pass_cannot_reach_falls_back_to_opacus_first_pass():
    """A bias-free first layer on raw inputs: nothing below it asks for its gradient, so its hook
    would not fire; the norms are checked and Opacus' full first pass runs instead."""
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = torch.nn.Linear(6, 5, bias=False)
            self.second = torch.nn.Linear(5, 2)

        def forward(self, input_ids):
            return type("Out", (), {"logits": self.second(torch.tanh(self.first(input_ids)))})()

    model = Net()
    x, labels = torch.randn(8, 6), torch.randint(0, 2, (8,))
    assert all(p is not model.first.weight for p in _lean_pass_inputs(model))
    reference = _grads(model, x, labels, lean=False)
    lean = _grads(model, x, labels, lean=True)
    assert sum(FULL_FIRST_PASSES) == 1  # the fallback ran
    for name in reference:
        torch.testing.assert_close(lean[name], reference[name], rtol=1e-6, atol=1e-8, msg=name)


def test_a_model_with_nothing_for_the_light_pass_uses_opacus_first_pass():
    """No bias, norm scale or embedding to differentiate towards: autograd.grad would refuse an
    empty input list, so the full first pass runs."""
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.only = torch.nn.Linear(6, 2, bias=False)

        def forward(self, input_ids):
            return type("Out", (), {"logits": self.only(input_ids)})()

    model = Net()
    x, labels = torch.randn(8, 6), torch.randint(0, 2, (8,))
    assert _lean_pass_inputs(model) == []
    reference = _grads(model, x, labels, lean=False)
    lean = _grads(model, x, labels, lean=True)
    assert sum(FULL_FIRST_PASSES) == 1
    torch.testing.assert_close(lean["only.weight"], reference["only.weight"], rtol=1e-6, atol=1e-8)
