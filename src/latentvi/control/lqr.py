"""Finite-horizon LQR (Riccati recursion), iLQR, and receding-horizon (MPC) control.

* :func:`lqr` — the time-varying, affine LQR problem

      minimize  Σ_{t<H} [½ x_tᵀ Q_t x_t + q_tᵀ x_t + ½ u_tᵀ R_t u_t + r_tᵀ u_t] + ½ x_Hᵀ Q_H x_H + q_Hᵀ x_H
      s.t.      x_{t+1} = A_t x_t + B_t u_t + c_t

  solved by the backward Riccati recursion; the optimal controls are ``u_t = K_t x_t + k_t``
  (Kalman 1960; Anderson & Moore, *Optimal Control*, ch. 2).
* :func:`ilqr` — iterative LQR (Li & Todorov 2004; Tassa, Erez & Todorov 2012) for nonlinear
  dynamics ``x' = f(x, u)`` and the quadratic cost toward a goal
  ``½ (x−g)ᵀ Q (x−g) + ½ uᵀ R u`` (terminal ``½ (x_H−g)ᵀ Q_H (x_H−g)``): linearize f around the
  nominal trajectory (autograd Jacobians, or a given ``linearize`` — E2C's own ``A_t, B_t``, as
  Watter et al. 2015 do), solve the LQR problem in the deviations, roll out with a line search.
  Controls lie in a box ``[low, high]``: the backward pass projects the feed-forward term onto the
  box and drops the feedback of clamped controls (Tassa et al.'s clamping; exact for one control),
  the forward pass clamps.
* :func:`goal_regulator` — the LQR feedback law of the dynamics linearized at the goal (a fixed
  gain, ``u = clamp(K (x − g) + k)``): it holds the system near an equilibrium that a local
  optimizer started from an open-loop plan misses when the goal is unstable (an inverted pendulum
  falls under any open-loop plan, so every iLQR iterate starting there plans a fall).
* :class:`MPC` — receding horizon: re-plan from each new state, apply the first control, warm
  start the next plan with the rest; optionally also plan from the rollout of a ``fallback``
  feedback policy (such as :func:`goal_regulator`) and keep the cheaper plan.

Everything is batched over independent problems: ``x [*N, X]``, ``u [*N, M]``, a plan
``U [*N, H, M]``, a trajectory ``[*N, H+1, X]``; gains ``K [*N, H, M, X]``, ``k [*N, H, M]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from latentvi.config import check_positive_int

__all__ = [
    "MPC",
    "ILQRResult",
    "LQRSolution",
    "goal_regulator",
    "ilqr",
    "lqr",
    "policy_rollout",
    "quadratic_cost",
    "rollout",
]

Dynamics = Callable[[Tensor, Tensor], Tensor]
"""``f(x [*N, X], u [*N, M]) -> x' [*N, X]``."""
Linearize = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""``(x [*N, X], u [*N, M]) -> (∂f/∂x [*N, X, X], ∂f/∂u [*N, X, M])``."""
Policy = Callable[[Tensor], Tensor]
"""``x [*N, X] -> u [*N, M]``."""


@dataclasses.dataclass(frozen=True)
class LQRSolution:
    """Gains ``K [*N, H, M, X]``, ``k [*N, H, M]`` and the value function ``V_t(x) = ½ xᵀ P_t x +
    p_tᵀ x + const`` as ``P [*N, H+1, X, X]``, ``p [*N, H+1, X]``."""

    K: Tensor
    k: Tensor
    P: Tensor
    p: Tensor


def _mv(matrix: Tensor, vector: Tensor) -> Tensor:
    return (matrix @ vector.unsqueeze(-1)).squeeze(-1)


def _time(tensor: Tensor | None, batch: torch.Size, horizon: int, event: int) -> Tensor | None:
    """Broadcast a cost/dynamics term to ``[*N, H, *event]``: it is either one term shared by every
    problem and step (``[*event]``) or broadcastable to ``[*N, H, *event]`` (``[*N, 1, *event]``
    for per-problem terms shared over time)."""
    if tensor is None:
        return None
    event_shape = tensor.shape[tensor.dim() - event :]
    if tensor.dim() == event:
        tensor = tensor.unsqueeze(0)
    return torch.broadcast_to(tensor, (*batch, horizon, *event_shape))


def lqr(
    A: Tensor,
    B: Tensor,
    Q: Tensor,
    R: Tensor,
    Q_final: Tensor,
    *,
    q: Tensor | None = None,
    r: Tensor | None = None,
    q_final: Tensor | None = None,
    c: Tensor | None = None,
    regularization: float = 0.0,
    nominal: Tensor | None = None,
    low: Tensor | float | None = None,
    high: Tensor | float | None = None,
) -> LQRSolution:
    """Solve the affine, time-varying LQR problem of the module docstring by the Riccati recursion.

    Args:
        A: ``[*N, H, X, X]`` dynamics; B: ``[*N, H, X, M]``; c: ``[*N, H, X]`` offsets (default 0).
        Q: ``[X, X]`` or ``[*N, H, X, X]``; R: ``[M, M]`` or ``[*N, H, M, M]``; Q_final: ``[*N, X, X]``.
        q, r, q_final: linear cost terms (default 0), shaped like the diagonals of Q, R, Q_final.
        regularization: μ added to the diagonal of ``R + BᵀPB`` (Levenberg–Marquardt).
        nominal, low, high: with a control box, the controls ``nominal + δu`` must stay in
            ``[low, high]``: the feed-forward ``k`` is projected onto the box for ``δu`` and the
            feedback rows of clamped controls are zeroed (``nominal [*N, H, M]``, default 0).

    Returns:
        :class:`LQRSolution`; the optimal control is ``u_t = K_t x_t + k_t``.
    """
    *batch, horizon, x_dim, u_dim = B.shape
    batch = torch.Size(batch)
    Q, R = _time(Q, batch, horizon, 2), _time(R, batch, horizon, 2)
    q, r, c = _time(q, batch, horizon, 1), _time(r, batch, horizon, 1), _time(c, batch, horizon, 1)
    P = torch.broadcast_to(Q_final, (*batch, x_dim, x_dim))
    p = torch.zeros(*batch, x_dim, dtype=A.dtype, device=A.device)
    if q_final is not None:
        p = p + q_final
    boxed = low is not None or high is not None
    Ps, ps, Ks, ks = [P], [p], [], []
    eye_u = torch.eye(u_dim, dtype=A.dtype, device=A.device)
    for t in reversed(range(horizon)):
        a, b = A[..., t, :, :], B[..., t, :, :]
        bt_p = b.transpose(-1, -2) @ P  # (*N, M, X)
        next_p = p if c is None else p + _mv(P, c[..., t, :])  # ∇V_{t+1} at the offset
        q_uu = R[..., t, :, :] + bt_p @ b + regularization * eye_u
        q_ux = bt_p @ a
        q_u = _mv(b.transpose(-1, -2), next_p)
        q_xx = Q[..., t, :, :] + a.transpose(-1, -2) @ P @ a
        q_x = _mv(a.transpose(-1, -2), next_p)
        if r is not None:
            q_u = q_u + r[..., t, :]
        if q is not None:
            q_x = q_x + q[..., t, :]
        solved = torch.linalg.solve(q_uu, torch.cat([q_ux, q_u.unsqueeze(-1)], dim=-1))
        K, k = -solved[..., :-1], -solved[..., -1]
        if boxed:
            base = torch.zeros_like(k) if nominal is None else nominal[..., t, :]
            target = base + k
            clamped = torch.zeros_like(target, dtype=torch.bool)
            if low is not None:
                clamped |= target < low
                target = torch.maximum(target, torch.as_tensor(low, dtype=k.dtype))
            if high is not None:
                clamped |= target > high
                target = torch.minimum(target, torch.as_tensor(high, dtype=k.dtype))
            k = target - base
            K = K.masked_fill(clamped.unsqueeze(-1), 0.0)
        # V_t for any (K, k), not only the unconstrained optimum:
        kt = K.transpose(-1, -2)
        P = q_xx + kt @ q_uu @ K + kt @ q_ux + q_ux.transpose(-1, -2) @ K
        P = 0.5 * (P + P.transpose(-1, -2))
        p = q_x + _mv(kt @ q_uu, k) + _mv(kt, q_u) + _mv(q_ux.transpose(-1, -2), k)
        Ps.append(P)
        ps.append(p)
        Ks.append(K)
        ks.append(k)
    return LQRSolution(
        K=torch.stack(Ks[::-1], dim=-3),
        k=torch.stack(ks[::-1], dim=-2),
        P=torch.stack(Ps[::-1], dim=-3),
        p=torch.stack(ps[::-1], dim=-2),
    )


def rollout(dynamics: Dynamics, x0: Tensor, actions: Tensor) -> Tensor:
    """States ``[*N, H+1, X]`` from ``x0 [*N, X]`` under ``actions [*N, H, M]``."""
    states = [x0]
    for t in range(actions.shape[-2]):
        states.append(dynamics(states[-1], actions[..., t, :]))
    return torch.stack(states, dim=-2)


def policy_rollout(dynamics: Dynamics, policy: Policy, x0: Tensor, horizon: int) -> Tensor:
    """The actions ``[*N, H, M]`` that the feedback ``policy`` takes from ``x0 [*N, X]`` for
    ``horizon`` steps of ``dynamics`` (closed loop: each from the state the last one led to)."""
    x, actions = x0, []
    for _ in range(check_positive_int("horizon", horizon)):
        u = policy(x)
        actions.append(u)
        x = dynamics(x, u)
    return torch.stack(actions, dim=-2)


def goal_regulator(
    dynamics: Dynamics,
    goal: Tensor,
    Q: Tensor,
    R: Tensor,
    Q_final: Tensor,
    *,
    horizon: int,
    action_dim: int,
    low: float | None = None,
    high: float | None = None,
    linearize: Linearize | None = None,
) -> Policy:
    """The LQR feedback around ``goal [X]``: ``x [*N, X] -> clamp(K (x − g) + k) [*N, M]``.

    ``f`` is linearized once at ``(goal, u = 0)`` (``linearize``, default autograd), keeping its
    drift ``c = f(g, 0) − g`` (a learned model's goal is rarely an exact fixed point); ``(K, k)``
    are the first-step gains of the ``horizon``-step LQR problem in ``δx = x − g`` with the costs
    ``Q, R, Q_final`` — for a long horizon, the stationary (infinite-horizon) regulator.
    """
    goal = goal.detach()
    u0 = torch.zeros(1, check_positive_int("action_dim", action_dim), dtype=goal.dtype)
    with torch.no_grad():
        drift = dynamics(goal.unsqueeze(0), u0)[0] - goal
    with torch.enable_grad():
        a, b = (linearize or jacobians(dynamics))(goal.unsqueeze(0), u0)
    h = check_positive_int("horizon", horizon)
    solution = lqr(
        a[0].expand(h, -1, -1), b[0].expand(h, -1, -1), Q, R, Q_final, c=drift.expand(h, -1)
    )
    K, k = solution.K[0].detach(), solution.k[0].detach()

    def policy(x: Tensor) -> Tensor:
        return _clamp(_mv(K, x - goal) + k, low, high)

    return policy


def quadratic_cost(
    states: Tensor, actions: Tensor, goal: Tensor, Q: Tensor, R: Tensor, Q_final: Tensor
) -> Tensor:
    """``Σ_{t<H} ½(x_t−g)ᵀQ(x_t−g) + ½u_tᵀRu_t + ½(x_H−g)ᵀQ_H(x_H−g)``: ``[*N, H+1, X] -> [*N]``."""
    error = states - goal.unsqueeze(-2)
    stage = 0.5 * (error[..., :-1, :] * _mv(Q, error[..., :-1, :])).sum((-1, -2))
    effort = 0.5 * (actions * _mv(R, actions)).sum((-1, -2))
    final = 0.5 * (error[..., -1, :] * _mv(Q_final, error[..., -1, :])).sum(-1)
    return stage + effort + final


def jacobians(dynamics: Dynamics) -> Linearize:
    """``(x, u) -> (∂f/∂x, ∂f/∂u)`` by autograd, for ``f`` that acts independently per row."""

    def linearize(x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        flat_x, flat_u = x.reshape(-1, x.shape[-1]), u.reshape(-1, u.shape[-1])
        jac = torch.func.vmap(torch.func.jacrev(_single(dynamics), argnums=(0, 1)))
        a, b = jac(flat_x, flat_u)
        return a.reshape(*x.shape, x.shape[-1]), b.reshape(*x.shape, u.shape[-1])

    return linearize


def _single(dynamics: Dynamics) -> Dynamics:
    return lambda x, u: dynamics(x.unsqueeze(0), u.unsqueeze(0)).squeeze(0)


@dataclasses.dataclass(frozen=True)
class ILQRResult:
    """The plan ``actions [*N, H, M]``, its ``states [*N, H+1, X]`` and ``cost [*N]``, the
    feedback gains ``K [*N, H, M, X]`` and the per-iteration costs ``history [I+1, *N]``."""

    actions: Tensor
    states: Tensor
    cost: Tensor
    K: Tensor
    history: Tensor


def ilqr(
    dynamics: Dynamics,
    x0: Tensor,
    actions: Tensor,
    goal: Tensor,
    Q: Tensor,
    R: Tensor,
    Q_final: Tensor,
    *,
    low: float | Tensor | None = None,
    high: float | Tensor | None = None,
    iterations: int = 20,
    linearize: Linearize | None = None,
    step_sizes: Sequence[float] = (1.0, 0.5, 0.25, 0.1, 0.03),
    regularization: float = 1e-6,
) -> ILQRResult:
    """Iterative LQR from ``x0 [*N, X]`` and an initial plan ``actions [*N, H, M]`` toward
    ``goal [*N, X]`` under the quadratic cost of :func:`quadratic_cost`.

    Each iteration linearizes ``dynamics`` along the nominal trajectory (``linearize``, default
    autograd :func:`jacobians`), solves the LQR problem in the deviations ``(δx, δu)`` with the
    cost's exact gradients and Hessians, and tries every step size α in ``step_sizes`` at once:
    ``u_t = clamp(ū_t + α k_t + K_t (x_t − x̄_t))``. Each problem keeps its cheapest candidate if it
    beats the nominal (cost never increases), and otherwise raises its regularization ×10.
    """
    check_positive_int("iterations", iterations)
    linearize = linearize or jacobians(dynamics)
    with torch.no_grad():
        goal = torch.broadcast_to(goal, x0.shape)
        actions = _clamp(actions, low, high)
        states = rollout(dynamics, x0, actions)
        cost = quadratic_cost(states, actions, goal, Q, R, Q_final)
        history = [cost]
        mu = torch.full_like(cost, regularization)
        alphas = torch.tensor(step_sizes, dtype=x0.dtype, device=x0.device)
        batch = x0.shape[:-1]
        K = None
        for _ in range(iterations):
            with torch.enable_grad():
                a, b = linearize(states[..., :-1, :], actions)
            error = states - goal.unsqueeze(-2)
            solution = _deviation_lqr(a, b, Q, R, Q_final, error, actions, mu, low, high)
            K = solution.K
            # Every step size at once: (α, *N, …).
            shape = (len(step_sizes), *(1,) * len(batch))
            step = alphas.reshape(*shape, 1, 1) * solution.k
            x = x0.expand(len(step_sizes), *x0.shape)
            trial_states, trial_actions = [x], []
            for t in range(actions.shape[-2]):
                u = (
                    actions[..., t, :]
                    + step[..., t, :]
                    + _mv(K[..., t, :, :], x - states[..., t, :])
                )
                u = _clamp(u, low, high)
                x = dynamics(x, u)
                trial_actions.append(u)
                trial_states.append(x)
            trial_states = torch.stack(trial_states, dim=-2)
            trial_actions = torch.stack(trial_actions, dim=-2)
            trial_cost = quadratic_cost(trial_states, trial_actions, goal, Q, R, Q_final)
            best_cost, best = trial_cost.min(0)
            improved = best_cost < cost
            pick = best.reshape(1, *batch, 1, 1).expand(1, *trial_states.shape[1:])
            new_states = trial_states.gather(0, pick).squeeze(0)
            pick = best.reshape(1, *batch, 1, 1).expand(1, *trial_actions.shape[1:])
            new_actions = trial_actions.gather(0, pick).squeeze(0)
            keep = improved.reshape(*batch, 1, 1)
            states = torch.where(keep, new_states, states)
            actions = torch.where(keep, new_actions, actions)
            cost = torch.where(improved, best_cost, cost)
            mu = torch.where(improved, (mu / 2).clamp_min(regularization), mu * 10)
            history.append(cost)
    return ILQRResult(actions, states, cost, K, torch.stack(history))


def _deviation_lqr(a, b, Q, R, Q_final, error, actions, mu, low, high) -> LQRSolution:
    """LQR in (δx, δu) around the nominal: linear terms ``Q e_t``, ``R ū_t``, ``Q_H e_H``."""
    q = _mv(Q, error[..., :-1, :])
    r = _mv(R, actions)
    q_final = _mv(Q_final, error[..., -1, :])
    # one μ per problem: fold it into R (the same as adding μI to Q_uu)
    eye = torch.eye(actions.shape[-1], dtype=actions.dtype, device=actions.device)
    R_mu = R + mu.reshape(*mu.shape, 1, 1, 1) * eye
    return lqr(
        a, b, Q, R_mu, Q_final, q=q, r=r, q_final=q_final, nominal=actions, low=low, high=high
    )


def _clamp(u: Tensor, low, high) -> Tensor:
    if low is None and high is None:
        return u
    return u.clamp(low, high) if not isinstance(low, Tensor) else torch.clamp(u, low, high)


class MPC:
    """Receding-horizon control with :func:`ilqr`: plan ``horizon`` steps from the current state,
    apply the first control, keep the rest (shifted, last control repeated) as the next warm start.

    With a ``fallback`` policy (``x [*N, X] -> u [*N, M]``, e.g. :func:`goal_regulator`), iLQR
    also runs from the fallback's closed-loop rollout (:func:`policy_rollout`), batched with the
    warm start, and each problem keeps the cheaper of the two optimized plans.

    ``MPC(...)(x [*N, X]) -> u [*N, M]``; :meth:`reset` forgets the plan.
    """

    def __init__(
        self,
        dynamics: Dynamics,
        goal: Tensor,
        Q: Tensor,
        R: Tensor,
        Q_final: Tensor,
        *,
        horizon: int,
        action_dim: int,
        low: float | None = None,
        high: float | None = None,
        iterations: int = 10,
        linearize: Linearize | None = None,
        initial_scale: float = 0.0,
        generator: torch.Generator | None = None,
        fallback: Policy | None = None,
    ) -> None:
        self.dynamics, self.goal = dynamics, goal
        self.Q, self.R, self.Q_final = Q, R, Q_final
        self.horizon = check_positive_int("horizon", horizon)
        self.action_dim = check_positive_int("action_dim", action_dim)
        self.low, self.high = low, high
        self.iterations = check_positive_int("iterations", iterations)
        self.linearize = linearize
        self.initial_scale = initial_scale
        self.generator = generator
        self.fallback = fallback
        self.plan: Tensor | None = None
        self.last: ILQRResult | None = None

    def reset(self) -> None:
        self.plan = None

    def __call__(self, x: Tensor) -> Tensor:
        if self.plan is None or self.plan.shape[:-2] != x.shape[:-1]:
            shape = (*x.shape[:-1], self.horizon, self.action_dim)
            noise = torch.randn(shape, generator=self.generator, dtype=x.dtype)
            self.plan = (self.initial_scale * noise).to(x.device)
        x0, plans = x, self.plan
        if self.fallback is not None:  # both starts in one batch: (2, *N, ...)
            with torch.no_grad():
                candidate = policy_rollout(self.dynamics, self.fallback, x, self.horizon)
            x0, plans = torch.stack([x, x]), torch.stack([plans, candidate])
        result = ilqr(
            self.dynamics,
            x0,
            plans,
            self.goal,
            self.Q,
            self.R,
            self.Q_final,
            low=self.low,
            high=self.high,
            iterations=self.iterations,
            linearize=self.linearize,
        )
        if self.fallback is not None:
            result = _cheaper(result)
        self.last = result
        self.plan = torch.cat([result.actions[..., 1:, :], result.actions[..., -1:, :]], dim=-2)
        return result.actions[..., 0, :]


def _cheaper(result: ILQRResult) -> ILQRResult:
    """Per problem, the cheaper of two results stacked along the first dimension."""
    second = result.cost[1] < result.cost[0]  # [*N]

    def pick(tensor: Tensor, batch_dims: int) -> Tensor:
        mask = second.reshape(*second.shape, *(1,) * (tensor.dim() - 1 - batch_dims))
        return torch.where(mask, tensor[1], tensor[0])

    n = second.dim()
    history = torch.where(second, result.history[:, 1], result.history[:, 0])
    return ILQRResult(
        pick(result.actions, n),
        pick(result.states, n),
        pick(result.cost, n),
        pick(result.K, n),
        history,
    )
