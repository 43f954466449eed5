"""Float64 NumPy/SciPy references and shared helpers for the balancer tests.

The test files import from here (``from references import ...``): the tests folders hold no
``__init__.py``, so pytest puts each test file's folder on ``sys.path``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

import jmtl.balancers as balancers

# ---------------------------------------------------------------- inputs


def gaussian_jacobian(num_tasks, seed, dim):
  """Standard normal ``[T, dim]`` rows."""
  return np.random.default_rng(seed).normal(size=(num_tasks, dim))


def scaled_jacobian(num_tasks, seed, dim):
  """Gaussian ``[T, dim]`` rows with different scales, so normalisation choices matter."""
  rng = np.random.default_rng(seed)
  return rng.normal(size=(num_tasks, dim)) * rng.uniform(0.2, 3.0, size=(num_tasks, 1))


def degenerate_jacobians(seed, dim):
  """Three-task Jacobians where weightings lose uniqueness or existence, by case name."""
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(3, dim))
  zero_row = base.copy()
  zero_row[1] = 0.0
  return {
      "zero_row": zero_row,
      "all_zero": np.zeros((3, dim)),
      "identical_rows": np.stack([base[0], base[0], base[2]]),
      "opposite_rows": np.stack([base[0], -base[0], base[2]]),
      "opposite_pair": np.stack([base[0], -base[0], 0.0 * base[0]]),
      "more_tasks_than_dims": rng.normal(size=(3, 2)),
      "tiny": 1e-8 * base,
      "huge": 1e8 * base,
      "mixed_magnitudes": base * np.array([[1e-8], [1.0], [1e8]]),
  }


PROBLEM_DIM = 7  # the nested-pytree check splits a row into a (2, 3) kernel and a bias


def random_problem(num_tasks, steps=8, seed=0):
  """Per-step Jacobians ``[steps, T, PROBLEM_DIM]`` and positive losses ``[steps, T]``."""
  rng = np.random.default_rng(seed + 101 * num_tasks)
  return (rng.normal(size=(steps, num_tasks, PROBLEM_DIM)),
          rng.uniform(0.2, 3.0, size=(steps, num_tasks)))


# ---------------------------------------------------------------- running jmtl


@functools.cache
def compiled(name, num_tasks, **hparams):
  """``(balancer, jitted update)``, cached so each configuration compiles once per session."""
  balancer = balancers.get(name, num_tasks, **hparams)
  return balancer, jax.jit(balancer.update)


def run_update(name, jacobian, state=None, losses=None, **hparams):
  """One jitted float32 update on a ``[T, ...]`` array or pytree of them.

  Args:
    name: registered balancer name.
    jacobian: the task gradients; each leaf's first axis is the task.
    state: the state to update; a fresh one when ``None``.
    losses: ``[T]`` task losses; ones when ``None``.
    **hparams: the balancer's hyperparameters (hashable: they key the compile cache).

  Returns:
    The output as float64 (the structure of one task's gradient) and the new state.
  """
  num_tasks = jax.tree.leaves(jacobian)[0].shape[0]
  balancer, update = compiled(name, num_tasks, **hparams)
  grads = jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float32), jacobian)
  if state is None:
    state = balancer.init(jax.tree.map(lambda leaf: leaf[0], grads))
  losses = np.ones(num_tasks) if losses is None else losses
  out, state = update(grads, state, task_losses=jnp.asarray(losses, jnp.float32))
  return jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), out), state


def run_steps(balancer, jacobians, losses):
  """Jitted float32 updates over ``[steps, T, d]`` Jacobians and ``[steps, T]`` losses.

  Returns:
    Per-step outputs ``[steps, d]`` and weights ``[steps, T]`` (float64), and the last state.
  """
  update = jax.jit(balancer.update)
  state = balancer.init(jnp.zeros(jacobians.shape[2:], jnp.float32))
  outputs, weights = [], []
  for jacobian, loss in zip(jacobians, losses):
    out, state = update(jnp.asarray(jacobian, jnp.float32), state,
                        task_losses=jnp.asarray(loss, jnp.float32))
    outputs.append(np.asarray(out, np.float64))
    weights.append(np.asarray(state.weights, np.float64))
  return np.stack(outputs), np.stack(weights), state


# ---------------------------------------------------------------- assertions


def assert_close(actual, expected, rtol=1e-4):
  """``allclose`` with ``atol = rtol * max|expected|``: small entries judged on the scale."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  scale = max(np.abs(expected).max(), 1e-30)
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def relative_error(actual, expected):
  """``||actual - expected|| / ||expected||`` in float64."""
  return np.linalg.norm(np.asarray(actual, np.float64) - expected) / np.linalg.norm(expected)


def assert_relative_close(actual, expected, tol=1e-4):
  """``relative_error < tol``; an all-zero ``expected`` asks for (nearly) zero."""
  scale = max(np.linalg.norm(expected), 1e-30)
  assert np.linalg.norm(np.asarray(actual, np.float64) - expected) / scale < tol, (actual, expected)


def assert_update_matches(grads, state, expected_grads, expected_weights, tol=1e-4):
  """The output and ``state.weights`` are both within relative error ``tol`` of a reference."""
  assert relative_error(grads, expected_grads) < tol
  assert relative_error(state.weights, expected_weights) < tol


def all_finite(tree):
  """Whether every floating leaf of ``tree`` is finite (integer leaves always are)."""
  return all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(leaf).dtype, np.floating))


def check_pytree_matches_flat(name, jacobian, task_losses):
  """A Gram method's output on a nested pytree equals its output on the flat ``[3, 12]`` rows."""
  tree = {"encoder": {"kernel": jacobian[:, :8].reshape(3, 2, 4)}, "head": jacobian[:, 8:]}
  balancer = balancers.get(name, 3)
  state = balancer.init(jax.tree.map(lambda leaf: leaf[0], tree))
  tree_grads, _ = jax.jit(lambda t, s: balancer.update(t, s, task_losses=task_losses))(
      jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float32), tree), state)
  flat_grads, _ = run_update(name, jacobian)
  flattened = np.concatenate(
      [np.ravel(tree_grads["encoder"]["kernel"]), np.ravel(tree_grads["head"])])
  np.testing.assert_allclose(flattened, flat_grads, rtol=1e-5, atol=1e-6)
  assert balancer.needs == "gram"


# ---------------------------------------------------------------- checks shared by the
# loss-weighting methods (test_loss_weighting.py, test_loss_adaptive.py)


def check_against_reference(name, hparams, reference_weights, num_tasks, steps=8):
  """Weights and outputs over ``steps`` updates match a float64 reference.

  Args:
    name: registered balancer name, built with ``hparams`` for ``num_tasks`` tasks.
    hparams: its hyperparameters.
    reference_weights: ``[steps, T]`` losses to the expected ``[steps, T]`` weights; the
      expected outputs are the same weights applied to the Jacobians.
    num_tasks: T.
    steps: updates on ``random_problem(num_tasks, steps)``.

  Returns:
    The per-step weights found (float64) and the last state.
  """
  jacobians, losses = random_problem(num_tasks, steps)
  outputs, weights, state = run_steps(balancers.get(name, num_tasks, **hparams), jacobians, losses)
  expected = reference_weights(losses)
  assert_close(weights, expected)
  assert_close(outputs, np.einsum("st,std->sd", expected, jacobians))
  return weights, state




def check_nested_pytree_matches_flat(name, hparams, weights_rtol):
  """Updates on a nested pytree equal those on the flat ``[T, d]`` matrix, step by step."""
  jacobians, losses = random_problem(3, steps=4)
  flat_out, flat_weights, _ = run_steps(balancers.get(name, 3, **hparams), jacobians, losses)
  balancer = balancers.get(name, 3, **hparams)
  update = jax.jit(balancer.update)
  tree = lambda m: {"dense": {"kernel": m[:, :6].reshape(-1, 2, 3)}, "bias": m[:, 6]}
  state = balancer.init({"dense": {"kernel": jnp.zeros((2, 3))}, "bias": jnp.zeros(())})
  for step, (jacobian, loss) in enumerate(zip(jacobians, losses)):
    out, state = update(tree(jnp.asarray(jacobian, jnp.float32)), state,
                        task_losses=jnp.asarray(loss, jnp.float32))
    flat = np.concatenate([np.asarray(out["bias"]).reshape(1),
                           np.asarray(out["dense"]["kernel"]).reshape(-1)])
    assert_close(flat, np.concatenate([flat_out[step, 6:], flat_out[step, :6]]), 1e-5)
    assert_close(state.weights, flat_weights[step], weights_rtol)


def check_degenerate_inputs_stay_finite(name, hparams):
  """Zero, identical and opposite rows, zero losses, and a single task: all stay finite."""
  row = np.random.default_rng(3).normal(size=PROBLEM_DIM)
  zeros = np.zeros(PROBLEM_DIM)
  cases = {
      "zero rows": (np.stack([row, zeros, zeros]), [1.0, 0.0, 0.0]),
      "identical rows": (np.stack([row, row, row]), [1.0, 1.0, 1.0]),
      "opposite rows": (np.stack([row, -row, row]), [0.5, 2.0, 1e-7]),
      "all losses zero": (np.zeros((3, PROBLEM_DIM)), [0.0, 0.0, 0.0]),
  }
  balancer = balancers.get(name, 3, **hparams)
  update = jax.jit(balancer.update)
  state = balancer.init(jnp.zeros(PROBLEM_DIM))
  for label, (jacobian, loss) in list(cases.items()) * 2:  # twice: from a degenerate state too
    out, state = update(jnp.asarray(jacobian, jnp.float32), state,
                        task_losses=jnp.asarray(loss, jnp.float32))
    assert all_finite((out, state)), label

  single = balancers.get(name, 1, **hparams)
  update = jax.jit(single.update)
  state = single.init(jnp.zeros(PROBLEM_DIM))
  for loss in (0.7, 0.5, 0.0):
    out, state = update(jnp.ones((1, PROBLEM_DIM)), state, task_losses=jnp.array([loss]))
    assert out.shape == (PROBLEM_DIM,) and np.all(np.isfinite(out))
    assert state.weights.shape == (1,)


def check_state_round_trips(name, hparams):
  """A state rebuilt from host arrays (a checkpoint) continues exactly like the original."""
  jacobians, losses = random_problem(2, steps=6)
  balancer = balancers.get(name, 2, **hparams)
  update = jax.jit(balancer.update)
  state = balancer.init(jnp.zeros(PROBLEM_DIM))
  for jacobian, loss in zip(jacobians[:3], losses[:3]):
    _, state = update(jnp.asarray(jacobian, jnp.float32), state,
                      task_losses=jnp.asarray(loss, jnp.float32))
  leaves, treedef = jax.tree.flatten(state)
  assert all(isinstance(leaf, jax.Array) for leaf in leaves)
  restored = jax.tree.unflatten(treedef, [np.asarray(leaf) for leaf in leaves])
  assert type(restored).__name__.endswith("State") and restored.weights.dtype == jnp.float32
  _, expected_weights, _ = run_steps(balancers.get(name, 2, **hparams), jacobians, losses)
  for step in range(3, 6):
    _, restored = update(jnp.asarray(jacobians[step], jnp.float32), restored,
                         task_losses=jnp.asarray(losses[step], jnp.float32))
    assert_close(restored.weights, expected_weights[step], 1e-6)


# ---------------------------------------------------------------- float64 references


def softmax(x):
  e = np.exp(x - np.max(x))
  return e / e.sum()


class NumpyAdam:
  """``torch.optim.Adam`` and ``optax.adam`` in float64; L2 ``weight_decay`` joins the gradient."""

  def __init__(self, lr, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8):
    self.lr, self.weight_decay, self.b1, self.b2, self.eps = lr, weight_decay, b1, b2, eps
    self.m = self.v = 0.0
    self.t = 0

  def step(self, x, grad):
    """Returns ``x`` after one Adam step along ``grad``."""
    grad = grad + self.weight_decay * x
    self.t += 1
    self.m = self.b1 * self.m + (1 - self.b1) * grad
    self.v = self.b2 * self.v + (1 - self.b2) * grad ** 2
    m_hat = self.m / (1 - self.b1 ** self.t)
    v_hat = self.v / (1 - self.b2 ** self.t)
    return x - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def trace_normalized_gram(jacobian):
  """``J J^T / tr(J J^T)``."""
  gram = jacobian @ jacobian.T
  return gram / np.trace(gram)


def simplex_projection(vector):
  """Euclidean projection onto the simplex by bisection on the threshold.

  Finds theta with ``sum(max(vector - theta, 0)) = 1``: not the sort algorithm the
  implementations use.
  """
  low, high = vector.min() - 1.0, vector.max()
  for _ in range(200):
    middle = 0.5 * (low + high)
    if np.maximum(vector - middle, 0.0).sum() > 1.0:
      low = middle
    else:
      high = middle
  return np.maximum(vector - 0.5 * (low + high), 0.0)


def simplex_qp_reference(objective, gradient, num_tasks):
  """SLSQP over the simplex from several starts (the problems are convex; starts are cheap)."""
  best = None
  starts = [np.full(num_tasks, 1 / num_tasks)] + [
      0.9 * np.eye(num_tasks)[i] + 0.1 / num_tasks for i in range(num_tasks)]
  for start in starts:
    result = scipy.optimize.minimize(
        objective, start, jac=gradient, method="SLSQP", bounds=[(0, 1)] * num_tasks,
        constraints={"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones_like(w)},
        options={"ftol": 1e-15, "maxiter": 1000})
    if best is None or result.fun < best.fun:
      best = result
  return best.x


def min_norm_reference(gram):
  """``argmin_{w in simplex} w^T G w``: the min-norm point of the convex hull (MGDA)."""
  return simplex_qp_reference(lambda w: w @ gram @ w, lambda w: 2 * gram @ w, len(gram))


def cagrad_dual_reference(gram, linear, radius):
  """``argmin_{w in simplex} a^T w + r sqrt(w^T G w)``: CAGrad's dual problem."""
  return simplex_qp_reference(
      lambda w: linear @ w + radius * np.sqrt(w @ gram @ w),
      lambda w: linear + radius * gram @ w / np.sqrt(w @ gram @ w), len(gram))


def _min_norm_of_pair(v1v1, v1v2, v2v2):
  """MinNormSolver._min_norm_element_from2 (Sener & Koltun's code), verbatim in float64."""
  if v1v2 >= v1v1:
    return 0.999, v1v1
  if v1v2 >= v2v2:
    return 0.001, v2v2
  gamma = -1.0 * ((v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2))
  return gamma, v2v2 + gamma * (v1v2 - v2v2)


def frank_wolfe_reference(gram, max_iter=250, stop_crit=1e-5):
  """Sener & Koltun's MinNormSolver.find_min_norm_element_FW in float64 (MAX_ITER enforced)."""
  n = len(gram)
  if n == 1:
    return np.ones(1)
  best_cost = np.inf
  for i in range(n):
    for j in range(i + 1, n):
      gamma, cost = _min_norm_of_pair(gram[i, i], gram[i, j], gram[j, j])
      if cost < best_cost:
        best_cost, best = cost, (i, j, gamma)
  weights = np.zeros(n)
  weights[best[0]], weights[best[1]] = best[2], 1 - best[2]
  if n < 3:
    return weights
  for _ in range(max_iter):
    vertex = np.argmin(gram @ weights)
    step, _ = _min_norm_of_pair(weights @ gram @ weights, weights @ gram[:, vertex],
                                gram[vertex, vertex])
    new = step * weights
    new[vertex] += 1 - step
    if np.abs(new - weights).sum() < stop_crit:
      return weights
    weights = new
  return weights


def alpha_fair_reference(gram, alpha):
  """``G w = w^(-1/alpha)`` (Nash-MTL at alpha 1, FairGrad) by least squares on log w, float64."""
  scale = np.trace(gram)
  normalized = gram / scale
  result = scipy.optimize.least_squares(
      lambda log_w: normalized @ np.exp(log_w) - np.exp(log_w)**(-1 / alpha),
      np.zeros(len(gram)), xtol=1e-15, ftol=1e-15, gtol=1e-15)
  assert result.cost < 1e-20
  return np.exp(result.x) * scale**(-alpha / (1 + alpha))
