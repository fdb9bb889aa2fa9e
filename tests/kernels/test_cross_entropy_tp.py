"""The fused linear + cross-entropy split over a 2-rank tensor-parallel group (gloo) vs the dense op.

Each rank holds half of the vocabulary (megatron's parallel_state initialized, TP=2), with
and without sequence parallelism (then each rank also holds half of the tokens).
"""

import pytest
import torch
from dist_utils import spawn
from kernel_parity import TOLERANCES, interpreted_children

from pretrain.kernels import cross_entropy

TOKENS, HIDDEN, VOCAB, CHUNK = 12, 16, 40, 5
IMPLEMENTATIONS = {"triton": cross_entropy.ChunkCrossEntropyTriton, "torch": cross_entropy.ChunkCrossEntropyTorch}


def problem():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(TOKENS, HIDDEN, generator=generator)
    weight = torch.randn(VOCAB, HIDDEN, generator=generator) * HIDDEN**-0.5
    labels = torch.randint(0, VOCAB, (TOKENS,), generator=generator)
    labels[3] = cross_entropy.IGNORE_INDEX
    return hidden, weight, labels


def tp_rank_results() -> dict:
    """On each of 2 ranks: loss and gradients of this rank's share, for each implementation and SP on/off."""
    from megatron.core import parallel_state

    from pretrain.parallel import cpu_compat

    cpu_compat.apply()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=2)
    rank = parallel_state.get_tensor_model_parallel_rank()
    group = parallel_state.get_tensor_model_parallel_group()
    hidden, weight, labels = problem()
    results = {}
    try:
        for name, chunk_ce in IMPLEMENTATIONS.items():
            for sequence_parallel in (False, True):
                h = (hidden.chunk(2)[rank] if sequence_parallel else hidden).clone().requires_grad_()
                w = weight.chunk(2)[rank].clone().requires_grad_()
                loss = cross_entropy.linear_cross_entropy(h, w, labels, tp_group=group, chunk_tokens=CHUNK,
                                                          sequence_parallel=sequence_parallel, chunk_ce=chunk_ce)
                (3.0 * loss).backward()
                results[name, sequence_parallel] = (loss.detach(), h.grad, w.grad)
    finally:
        parallel_state.destroy_model_parallel()
    return results


@pytest.fixture(scope="module")
def rank_results():
    with interpreted_children():
        return spawn(tp_rank_results, 2)


@pytest.mark.parametrize("sequence_parallel", [False, True], ids=["tp", "tp+sp"])
@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
def test_tp2_matches_dense_single_process(rank_results, implementation, sequence_parallel):
    hidden, weight, labels = problem()
    hidden.requires_grad_()
    weight.requires_grad_()
    dense = cross_entropy.linear_cross_entropy_reference(hidden, weight, labels)
    (3.0 * dense).backward()
    tolerance = TOLERANCES[torch.float32]
    ranks = [result[implementation, sequence_parallel] for result in rank_results]
    for rank, (loss, hidden_grad, _) in enumerate(ranks):
        torch.testing.assert_close(loss, dense.detach(), **tolerance)
        expected = hidden.grad.chunk(2)[rank] if sequence_parallel else hidden.grad
        torch.testing.assert_close(hidden_grad, expected, **tolerance)
    torch.testing.assert_close(torch.cat([weight_grad for _, _, weight_grad in ranks]), weight.grad, **tolerance)
