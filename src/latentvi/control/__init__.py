"""Classical control as plain functions of costs and dynamics, with no run configuration:
LQR and iLQR (:mod:`latentvi.control.lqr`), LQR-FLM under a KL bound
(:mod:`latentvi.control.lqr_flm`), value iteration on a grid
(:mod:`latentvi.control.value_iteration`) and the cross-entropy method
(:mod:`latentvi.control.cem`)."""
