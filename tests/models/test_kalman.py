"""The linear-Gaussian state-space model: Kalman filter and RTS smoother against brute-force joint
Gaussians, and the sequence ELBO against the exact log p(o_{1:T}) (float64 throughout)."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from latentvi.bounds import sequence_elbo
from latentvi.models.kalman import GaussMarkovChain, LinearGaussianSSM

T, N, D, U = 5, 2, 3, 1


def model() -> LinearGaussianSSM:
    g = torch.Generator().manual_seed(0)
    kw = {"dtype": torch.float64, "generator": g}
    a = torch.tensor([[0.9, 0.2], [-0.3, 0.8]], dtype=torch.float64)
    c = torch.randn(D, N, **kw)
    q_root = 0.3 * torch.randn(N, N, **kw)
    r_root = 0.4 * torch.randn(D, D, **kw)
    return LinearGaussianSSM(
        transition=a,
        emission=c,
        process_cov=q_root @ q_root.T + 0.1 * torch.eye(N, dtype=torch.float64),
        obs_cov=r_root @ r_root.T + 0.2 * torch.eye(D, dtype=torch.float64),
        initial_mean=torch.tensor([0.5, -1.0], dtype=torch.float64),
        initial_cov=torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64),
        control=torch.randn(N, U, **kw),
    )


def data(m: LinearGaussianSSM, batch=(3,), seed=1):
    g = torch.Generator().manual_seed(seed)
    actions = torch.randn(T, *batch, U, dtype=torch.float64, generator=g)
    _, obs = m.sample(T, batch, actions, generator=g)
    return obs, actions


@torch.no_grad()
def brute_force_joint(m: LinearGaussianSSM, actions):
    """The joint Gaussian of (x_{1:T}, o_{1:T}) for one action sequence ``[T, U]``, built from the
    explicit linear map x = mean + M ε (x_t = A^{t−1}(μ₀ + L₀ε₀) + Σ_s A^{t−1−s}(B a_s + L_Q ε_s))."""
    a, b, c = m.transition, m.control, m.emission
    l0 = torch.linalg.cholesky(m.initial_cov)
    lq = torch.linalg.cholesky(m.process_cov)
    power = [torch.linalg.matrix_power(a, k) for k in range(T)]
    mean_x = torch.zeros(T * N, dtype=torch.float64)
    noise_map = torch.zeros(T * N, T * N, dtype=torch.float64)
    for t in range(T):
        rows = slice(t * N, (t + 1) * N)
        mean_x[rows] = power[t] @ m.initial_mean
        noise_map[rows, 0:N] = power[t] @ l0
        for s in range(1, t + 1):
            mean_x[rows] += power[t - s] @ (b @ actions[s])
            noise_map[rows, s * N : (s + 1) * N] = power[t - s] @ lq
    cov_x = noise_map @ noise_map.T
    emit = torch.block_diag(*([c] * T))
    mean_o = emit @ mean_x
    cov_o = emit @ cov_x @ emit.T + torch.block_diag(*([m.obs_cov] * T))
    cross = cov_x @ emit.T  # Cov(x, o)
    return mean_x, cov_x, mean_o, cov_o, cross


def exact_posterior(m, obs, actions):
    """p(x_{1:T} | o_{1:T}) for one sequence by conditioning the brute-force joint."""
    mean_x, cov_x, mean_o, cov_o, cross = brute_force_joint(m, actions)
    gain = torch.linalg.solve(cov_o, cross.T).T
    mean = mean_x + gain @ (obs.reshape(-1) - mean_o)
    return mean, cov_x - gain @ cross.T


def closed_form_elbo(m, obs, actions, q: MultivariateNormal) -> torch.Tensor:
    """E_q[log p(o|x) + log p(x)] + H(q) for a Gaussian q over x_{1:T} (flattened), one sequence:
    E_q log N(y; G x + c, Σ) = log N(y; G μ + c, Σ) − ½ tr(Σ⁻¹ G V Gᵀ)."""
    mean_x, cov_x, *_ = brute_force_joint(m, actions)
    mu, v = q.mean, q.covariance_matrix
    prior = MultivariateNormal(mean_x, cov_x)
    prior_term = prior.log_prob(mu) - 0.5 * torch.trace(torch.linalg.solve(cov_x, v))
    emit = torch.block_diag(*([m.emission] * T))
    noise = torch.block_diag(*([m.obs_cov] * T))
    likelihood = MultivariateNormal(emit @ mu, noise).log_prob(obs.reshape(-1))
    likelihood = likelihood - 0.5 * torch.trace(torch.linalg.solve(noise, emit @ v @ emit.T))
    return likelihood + prior_term + q.entropy()


def chain_at(chain: GaussMarkovChain, i: int) -> GaussMarkovChain:
    """One sequence (batch index i) of a chain with batch ``[B]``."""
    return GaussMarkovChain(
        chain.initial_mean[i],
        chain.initial_cov[i],
        chain.gains[:, i],
        chain.offsets[:, i],
        chain.covs[:, i],
    )


def test_kalman_log_marginal_equals_joint_gaussian():
    """log p(o_{1:T}) from the filter equals the T·D-dimensional Gaussian's log density (1e-9)."""
    m = model()
    obs, actions = data(m)
    filtered = m.log_marginal(obs, actions)
    for i in range(obs.shape[1]):
        _, _, mean_o, cov_o, _ = brute_force_joint(m, actions[:, i])
        exact = MultivariateNormal(mean_o, cov_o).log_prob(obs[:, i].reshape(-1))
        torch.testing.assert_close(filtered[i], exact, atol=1e-9, rtol=0)


def test_smoother_and_posterior_chain_are_the_exact_posterior():
    """RTS marginals and the forward chain's full joint equal p(x_{1:T}|o_{1:T}) by conditioning."""
    m = model()
    obs, actions = data(m)
    means, covs, _ = m.smooth(obs, actions)
    chain = m.posterior_chain(obs, actions)
    for i in range(obs.shape[1]):
        mean, cov = exact_posterior(m, obs[:, i], actions[:, i])
        torch.testing.assert_close(means[:, i].reshape(-1), mean, atol=1e-9, rtol=0)
        for t in range(T):
            block = cov[t * N : (t + 1) * N, t * N : (t + 1) * N]
            torch.testing.assert_close(covs[t, i], block, atol=1e-9, rtol=0)
        joint = chain_at(chain, i).joint()
        torch.testing.assert_close(joint.mean, mean, atol=1e-9, rtol=0)
        torch.testing.assert_close(joint.covariance_matrix, cov, atol=1e-9, rtol=0)


def monte_carlo_terms(m, chain: GaussMarkovChain, obs, actions, samples: int, analytic_kl: bool):
    """Per-step (log p(o_t|x_t), KL_t) ``[T, S, B]`` at ancestral samples of the chain: the KL is
    KL(q(x_t|x_{t−1}) ‖ p(x_t|x_{t−1}, a)) given the sample x_{t−1}, or its single-sample form."""
    x = chain.rsample((samples,))  # (T, S, B, n)
    log_likelihood = torch.stack([m.emission_dist(x[t]).log_prob(obs[t]) for t in range(T)])
    divergences = []
    for t in range(T):
        if t == 0:
            q, p = chain.initial(), m.initial()
        else:
            q = chain.conditional(t, x[t - 1])
            p = m.transition_dist(x[t - 1], actions[t])
        if analytic_kl:
            divergences.append(kl_divergence(q, p).expand(samples, -1))
        else:
            divergences.append(q.log_prob(x[t]) - p.log_prob(x[t]))
    return log_likelihood, torch.stack(divergences)


def test_sequence_elbo_with_exact_posterior_equals_log_marginal():
    """With q the exact posterior chain, the closed-form ELBO is log p(o) (1e-6), and so is every
    single-sample sequence ELBO (log p(o, x) − log q(x) is constant under the exact posterior)."""
    m = model()
    obs, actions = data(m)
    exact = m.log_marginal(obs, actions)
    chain = m.posterior_chain(obs, actions)
    for i in range(obs.shape[1]):
        elbo = closed_form_elbo(m, obs[:, i], actions[:, i], chain_at(chain, i).joint())
        torch.testing.assert_close(elbo, exact[i], atol=1e-6, rtol=0)
    torch.manual_seed(3)
    with torch.no_grad():
        log_likelihood, divergence = monte_carlo_terms(m, chain, obs, actions, 16, False)
    per_sample = sequence_elbo(log_likelihood, divergence)  # (S, B)
    torch.testing.assert_close(per_sample, exact.expand(16, -1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["filtering", "perturbed"])
def test_sequence_elbo_below_log_marginal(family):
    """A non-exact Gaussian chain q: the closed-form ELBO is below log p(o) by exactly
    KL(q ‖ p(x|o)), and the Monte Carlo sequence ELBO (analytic per-step KL given the sampled
    x_{t−1}) agrees with the closed form within 4 standard errors."""
    m = model()
    obs, actions = data(m)
    exact = m.log_marginal(obs, actions)
    if family == "filtering":
        chain = m.filtering_chain(obs, actions)
    else:
        exact_chain = m.posterior_chain(obs, actions)
        chain = exact_chain._replace(offsets=exact_chain.offsets + 0.3, covs=1.5 * exact_chain.covs)
    closed = []
    for i in range(obs.shape[1]):
        q = chain_at(chain, i).joint()
        elbo = closed_form_elbo(m, obs[:, i], actions[:, i], q)
        mean, cov = exact_posterior(m, obs[:, i], actions[:, i])
        gap = kl_divergence(q, MultivariateNormal(mean, cov))
        assert elbo < exact[i] - 1e-3
        torch.testing.assert_close(exact[i] - elbo, gap, atol=1e-6, rtol=0)
        closed.append(elbo)
    torch.manual_seed(4)
    samples = 4000
    with torch.no_grad():
        log_likelihood, divergence = monte_carlo_terms(m, chain, obs, actions, samples, True)
    estimates = sequence_elbo(log_likelihood, divergence)  # (S, B)
    stderr = estimates.std(0) / math.sqrt(samples)
    assert ((estimates.mean(0) - torch.stack(closed)).abs() < 4 * stderr).all()


@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_shapes_over_batch_shapes(batch):
    m = model()
    obs, actions = data(m, batch)
    result = m.filter(obs, actions)
    assert result.log_marginal.shape == batch
    assert result.step_log_likelihoods.shape == (T, *batch)
    assert result.filtered_means.shape == (T, *batch, N)
    assert result.filtered_covs.shape == (T, *batch, N, N)
    means, covs, gains = m.smooth(obs, actions)
    assert means.shape == (T, *batch, N) and covs.shape == (T, *batch, N, N)
    assert gains.shape == (T - 1, *batch, N, N)
    for chain in (m.posterior_chain(obs, actions), m.filtering_chain(obs, actions)):
        assert chain.rsample((2,)).shape == (T, 2, *batch, N)
        assert chain.joint().event_shape == (T * N,) and chain.joint().batch_shape == batch


def test_filter_without_actions_and_single_step():
    """No control: the filter matches the joint Gaussian with zero actions; T = 1 is N(C μ₀, C Σ₀ Cᵀ + R)."""
    m = model()
    obs, _ = data(m, ())
    free = LinearGaussianSSM(
        m.transition.detach(),
        m.emission.detach(),
        m.process_cov.detach(),
        m.obs_cov.detach(),
        m.initial_mean.detach(),
        m.initial_cov.detach(),
    )
    _, _, mean_o, cov_o, _ = brute_force_joint(m, torch.zeros(T, U, dtype=torch.float64))
    exact = MultivariateNormal(mean_o, cov_o).log_prob(obs.reshape(-1))
    torch.testing.assert_close(free.log_marginal(obs), exact, atol=1e-9, rtol=0)
    c = free.emission.detach()
    single = MultivariateNormal(
        c @ free.initial_mean.detach(), c @ free.initial_cov.detach() @ c.T + free.obs_cov.detach()
    ).log_prob(obs[0])
    torch.testing.assert_close(free.log_marginal(obs[:1]), single, atol=1e-9, rtol=0)


def test_log_marginal_gradient_matches_finite_differences():
    """The filter's log p(o) is differentiable in the parameters: autograd = central differences."""
    m = model()
    obs, actions = data(m)
    m.log_marginal(obs, actions).sum().backward()
    analytic = m.transition.grad[0, 1].item()
    h = 1e-6
    with torch.no_grad():
        m.transition[0, 1] += h
        up = m.log_marginal(obs, actions).sum().item()
        m.transition[0, 1] -= 2 * h
        down = m.log_marginal(obs, actions).sum().item()
    assert analytic == pytest.approx((up - down) / (2 * h), rel=1e-6, abs=1e-7)


def test_bad_inputs_raise():
    m = model()
    good = {
        "transition": torch.eye(2),
        "emission": torch.ones(3, 2),
        "process_cov": torch.eye(2),
        "obs_cov": torch.eye(3),
        "initial_mean": torch.zeros(2),
        "initial_cov": torch.eye(2),
    }
    with pytest.raises(ValueError, match="process_cov"):
        LinearGaussianSSM(**{**good, "process_cov": -torch.eye(2)})
    with pytest.raises(ValueError, match="emission"):
        LinearGaussianSSM(**{**good, "emission": torch.ones(3, 5)})
    with pytest.raises(ValueError, match="initial_mean"):
        LinearGaussianSSM(**{**good, "initial_mean": torch.zeros(3)})
    with pytest.raises(ValueError, match="obs"):
        m.filter(torch.zeros(T, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="actions"):
        m.filter(torch.zeros(T, D, dtype=torch.float64), torch.zeros(T, 2, dtype=torch.float64))
