"""Per-datapoint Gaussians: shapes, parametrization, sparse updates, the lean sparse Adam."""

import time

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from latentvi.inference import LazyAdam, LocalGaussians, make_optimizers

INDEX_SHAPES = [(), (4,), (2, 3)]


@pytest.mark.parametrize("shape", INDEX_SHAPES)
@pytest.mark.parametrize("full_covariance", [False, True])
def test_shapes(shape, full_covariance):
    table = LocalGaussians(10, 3, full_covariance=full_covariance)
    index = torch.randint(0, 10, shape)
    q = table(index)
    assert isinstance(q, MultivariateNormal if full_covariance else Independent)
    assert q.batch_shape == shape and q.event_shape == (3,)
    z = q.rsample((5,))
    assert z.shape == (5, *shape, 3)
    assert q.log_prob(z).shape == (5, *shape)


def test_initial_values_and_dtype():
    init_loc = torch.arange(12, dtype=torch.float64).reshape(4, 3)
    diagonal = LocalGaussians(4, 3, init_loc=init_loc, init_scale=0.5, dtype=torch.float64)
    q = diagonal(torch.tensor([2, 0]))
    assert isinstance(q.base_dist, Normal) and q.mean.dtype == torch.float64
    torch.testing.assert_close(q.mean, init_loc[[2, 0]])
    torch.testing.assert_close(q.stddev, torch.full((2, 3), 0.5, dtype=torch.float64))
    full = LocalGaussians(4, 3, full_covariance=True, init_scale=0.5, dtype=torch.float64)
    q = full(torch.arange(4))
    expected = torch.eye(3, dtype=torch.float64).expand(4, 3, 3) * 0.25
    torch.testing.assert_close(q.covariance_matrix, expected)


def test_full_covariance_parametrization():
    """L is lower triangular with a softplus diagonal; the strictly lower entries are free."""
    torch.manual_seed(0)
    table = LocalGaussians(5, 4, full_covariance=True, dtype=torch.float64)
    assert table.table.weight.shape == (5, 4 + 4 + 6)
    with torch.no_grad():
        table.table.weight.normal_()
    q = table(torch.arange(5))
    scale_tril = q.scale_tril
    assert torch.equal(scale_tril, scale_tril.tril())
    raw = table.table.weight
    diag = torch.nn.functional.softplus(raw[:, 4:8]) + table.min_scale
    torch.testing.assert_close(scale_tril.diagonal(dim1=-2, dim2=-1), diag)
    rows, cols = torch.tril_indices(4, 4, offset=-1)
    torch.testing.assert_close(scale_tril[:, rows, cols], raw[:, 8:])
    torch.testing.assert_close(q.mean, raw[:, :4])
    torch.testing.assert_close(table.all().covariance_matrix, q.covariance_matrix)


@pytest.mark.parametrize("full_covariance", [False, True])
@pytest.mark.parametrize("sparse_optimizer", [None, torch.optim.SparseAdam])
def test_a_step_touches_only_the_batch_rows(full_covariance, sparse_optimizer):
    torch.manual_seed(0)
    table = LocalGaussians(50, 3, full_covariance=full_covariance)
    with torch.no_grad():
        table.table.weight.normal_()
    before = table.table.weight.detach().clone()
    (optimizer,) = make_optimizers(table, lr=0.1, sparse_optimizer=sparse_optimizer)
    assert isinstance(optimizer, sparse_optimizer or LazyAdam)
    index = torch.tensor([3, 17, 17, 41])  # a duplicate row too
    for _ in range(3):
        optimizer.zero_grad()
        q = table(index)
        (q.rsample((2,)).pow(2).sum() + q.entropy().sum()).backward()
        assert table.table.weight.grad.is_sparse
        optimizer.step()
    after = table.table.weight.detach()
    touched = torch.zeros(50, dtype=torch.bool)
    touched[index] = True
    assert torch.equal(after[~touched], before[~touched])  # bitwise unchanged
    assert (after[touched] != before[touched]).all(dim=-1).all()  # every entry of a touched row
    state = optimizer.state[table.table.weight]
    for moment in ("exp_avg", "exp_avg_sq"):
        assert (state[moment][~touched] == 0).all() and (state[moment][touched] != 0).all()


def test_make_optimizers_one_lazy_adam_or_a_split():
    table = LocalGaussians(8, 2)
    dense = torch.nn.Linear(2, 2)
    (optimizer,) = make_optimizers([table, dense], lr=0.01)
    assert isinstance(optimizer, LazyAdam)
    expected = [table.table.weight, *dense.parameters()]
    assert list(map(id, optimizer.param_groups[0]["params"])) == list(map(id, expected))
    sparse_optimizer, adam = make_optimizers(
        [table, dense], lr=0.01, sparse_optimizer=torch.optim.SparseAdam
    )
    assert isinstance(sparse_optimizer, torch.optim.SparseAdam)
    assert isinstance(adam, torch.optim.Adam)
    assert sparse_optimizer.param_groups[0]["params"] == [table.table.weight]
    assert set(map(id, adam.param_groups[0]["params"])) == set(map(id, dense.parameters()))
    dense.weight.requires_grad_(False)
    (_, adam) = make_optimizers([table, dense], lr=0.01, sparse_optimizer=torch.optim.SparseAdam)
    assert adam.param_groups[0]["params"] == [dense.bias]
    assert make_optimizers(torch.nn.Module(), lr=0.01) == []


def test_large_table_is_routine():
    """60 000 examples × Z = 20: 9.6 MB of float32 for (μ, raw σ); a 256-row lookup is cheap."""
    table = LocalGaussians(60_000, 20)
    assert table.table.weight.shape == (60_000, 40)
    assert table.table.weight.element_size() * table.table.weight.numel() == 9_600_000
    (optimizer,) = make_optimizers(table, lr=0.01)
    index = torch.randint(0, 60_000, (256,))
    started = time.perf_counter()
    for _ in range(10):
        optimizer.zero_grad()
        table(index).rsample().sum().backward()
        optimizer.step()
    # Generous bound (the step takes well under a millisecond): it must not scale with N.
    assert time.perf_counter() - started < 1.0


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="num_points"):
        LocalGaussians(0, 2)
    with pytest.raises(ValueError, match="latent_dim"):
        LocalGaussians(5, 0)
    with pytest.raises(ValueError, match="init_loc"):
        LocalGaussians(5, 2, init_loc=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="init_scale"):
        LocalGaussians(5, 2, init_scale=0.0)
    table = LocalGaussians(5, 2)
    with pytest.raises(ValueError, match=r"index must lie in \[0, num_points\)"):
        table(torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="index must lie"):
        table(torch.tensor([-1]))
    with pytest.raises(ValueError, match="index must be an integer tensor"):
        table(torch.tensor([0.0, 1.0]))
