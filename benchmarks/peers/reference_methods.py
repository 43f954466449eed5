"""Which jmtl method is compared with which peer, under which convention, and why they may differ.

One table (``METHODS``) holds every pairing the reference agreement run makes: the jmtl name
and hyperparameters, the peer's class and keyword arguments, and ``scale``, the factor that
maps the peer's direction and weights onto jmtl's convention. The conventions are stated
here once, so the report can say exactly what was normalised:

jmtl's methods follow one scale convention (README, "Scale convention"): T identical
gradients g give g, i.e. the mean where a paper sums; ``reduction="sum"`` selects the paper's
scale. The rows compare jmtl's default (the mean) and bring the peer onto it:

* ``same``: identical conventions (both average, or both put weights on the simplex;
  torchjd's Aligned-MTL and ExcessMTL average as jmtl does);
* ``1/T``: the peer sums where jmtl averages (LibMTL's EW is a sum of the task losses; both
  peers' PCGrad and GradVac sum the edited gradients, torchjd's ConFIG sums the projections,
  LibMTL's UW sums the weighted losses);
* ``T``: the peer averages where jmtl sums (no row today: kept for a jmtl ``sum`` row);
* ``1/(1+c^2)``: torchjd's CAGrad has no ``rescale``; jmtl and LibMTL divide by ``1 + c^2``
  (the official ``rescale=1``);

(torchjd's Nash-MTL, like the official code, divides G by ``|G|_F`` but multiplies it back
inside its constraint ``a_i (G a)_i |G|_F >= 1``, so its alpha solves ``G a = 1/a`` on G
itself, as jmtl's does: no factor.)

``NOT_COMPARED`` says, for every jmtl method without a row, why: no peer has it, or no
step-level comparison means anything. Everything here is plain data (NumPy-free), so both
halves of the run and the tests read the same table.
"""

from __future__ import annotations

from typing import NamedTuple

ALL_TASKS = (2, 3, 8)
CAGRAD_C = 0.5  # LibMTL's calpha default and torchjd's usual value, as in benchmarks/peers
LN2 = 0.6931471805599453


class Peer(NamedTuple):
  library: str                   # "libmtl" or "torchjd"
  peer: str                      # class name in LibMTL.weighting / torchjd.aggregation
  hparams: dict                  # LibMTL: backward's kwargs; torchjd: the constructor's
  scale: str = "same"            # peer -> jmtl convention, see the module docstring
  weights: bool = True           # compare the weights (when both expose them)
  note: str = ""                 # a known difference of variant, regulariser or solver


class Method(NamedTuple):
  name: str                      # the row's name (a jmtl balancer name)
  hparams: dict                  # jmtl hyperparameters
  peers: tuple[Peer, ...]
  tasks: tuple[int, ...] = ALL_TASKS
  steps: int = 2                 # steps compared (stateful methods: the state's effect too)
  weights: bool = True           # jmtl's state.weights are the applied weights
  distribution: bool = False     # random method: compare the distribution of its weights
  note: str = ""


_DUAL_CONE = ("both trace-normalise G and add reg_eps = 1e-4 to its diagonal; jmtl solves the "
              "QPs by a fixed-budget interior point in float32, torchjd by quadprog in float64")

METHODS: tuple[Method, ...] = (
    Method("mean", {}, (
        Peer("torchjd", "Mean", {}),
        Peer("libmtl", "EW", {}, scale="1/T", note="LibMTL's EW sums the losses (weights 1)"))),
    Method("sum", {}, (Peer("torchjd", "Sum", {}), Peer("libmtl", "EW", {}))),
    Method("pcgrad", {"random_order": False}, (
        Peer("torchjd", "PCGrad", {}, scale="1/T"),
        Peer("libmtl", "PCGrad", {}, scale="1/T",
             note="LibMTL also projects g_i' on g_i itself (a no-op "
             "unless g_i' . g_i < 0 by then)")),
        note="fixed task order: the peers' shuffles are patched to identities"),
    Method("mgda", {}, (
        Peer("torchjd", "MGDA", {}, note="Frank-Wolfe, epsilon 1e-3, 100 iterations"),
        Peer("libmtl", "MGDA", {"mgda_gn": "none"}, note="Frank-Wolfe, stop at 1e-5, 250 "
             "iterations")),
        note="jmtl default solver: Frank-Wolfe on the trace-normalised G, 250 iterations"),
    Method("cagrad", {"c": CAGRAD_C, "rescale": 1}, (
        Peer("torchjd", "CAGrad", {"c": CAGRAD_C}, scale="1/(1+c^2)",
             note="dual solved by cvxpy (Clarabel) on the trace-normalised G; torchjd returns "
             "ZERO weights when |g_w| there is below norm_eps = 1e-4 (its 'on the Pareto front' "
             "test), which a small task's gradient triggers when norms span orders of "
             "magnitude"),
        Peer("libmtl", "CAGrad", {"calpha": CAGRAD_C, "rescale": 1},
             weights=False, note="LibMTL returns the dual w, not the applied weights; its "
             "objective is written for T = 3 only (x.reshape(1, 3)); SLSQP"))),
    Method("imtl_g", {}, (
        Peer("torchjd", "IMTLG", {}),
        Peer("libmtl", "IMTL", {}, note="LibMTL's IMTL is the IMTL-G/IMTL-L hybrid; at its "
             "initial loss scales (0) the gradient part is IMTL-G's closed form with an "
             "explicit inverse"))),
    Method("nash_mtl", {"max_norm": 0.0}, (
        Peer("torchjd", "NashMTL", {"max_norm": 0.0, "update_weights_every": 1,
                                     "optim_niter": 20},
             note="official solver: up to 20 cvxpy/ECOS convex programs, warm-started from "
             "the previous step's alpha, stopping at |G a - 1/a| < 1e-3 on G/|G|_F"),),
        note="no clipping on either side (max_norm=0): the clip would hide alpha's scale"),
    Method("fairgrad", {"alpha": 1.0}, (
        Peer("torchjd", "FairGrad", {"alpha": 1.0}, note="scipy least_squares from 1/T"),)),
    Method("aligned_mtl", {"scale_mode": "min"}, (
        Peer("torchjd", "AlignedMTL", {"scale_mode": "min"},
             note="the rank cut max(lambda) T eps uses the dtype's eps, so on an "
             "ill-conditioned G float32 and float64 keep different numbers of eigenvalues, and "
             "near the cut float32 round-off decides whether the smallest is kept (the answer "
             "jumps)"),)),
    Method("upgrad", {}, (Peer("torchjd", "UPGrad", {}, note=_DUAL_CONE),)),
    Method("dualproj", {}, (Peer("torchjd", "DualProj", {}, note=_DUAL_CONE),)),
    Method("config", {}, (Peer("torchjd", "ConFIG", {}, scale="1/T"),), weights=False),
    Method("krum", {"n_byzantine": 0, "n_selected": 1}, (
        Peer("torchjd", "Krum", {"n_byzantine": 0, "n_selected": 1}),),
        tasks=(3, 8)),
    Method("trimmed_mean", {"trim_number": 1}, (
        Peer("torchjd", "TrimmedMean", {"trim_number": 1}),), tasks=(3, 8), weights=False),
    Method("gradvac", {"beta": 0.5}, (
        Peer("torchjd", "GradVac", {"beta": 0.5}, scale="1/T"),
        Peer("libmtl", "GradVac", {"beta": 0.5}, scale="1/T",
             note="LibMTL moves the EMA target only on conflict; jmtl every step (Algorithm 1)")),
        tasks=(2,), note="T = 2 only: jmtl's task order is always random, and with two tasks "
        "there is one order"),
    Method("excess_mtl", {"robust_step_size": 1e-2}, (
        Peer("torchjd", "ExcessMTL", {"robust_step_size": 1e-2},
             note="variant: on its first step torchjd applies the raw excess estimate, "
             "softmax(eta e_i); the authors' code (as vendored in LibMTL's later "
             "weighting/ExcessMTL.py) and jmtl only record e_i(0) and keep the weights equal, "
             "so the weights differ from step 1 on (jmtl's are equal, 1/T each)"),)),
    Method("gls", {}, (
        Peer("libmtl", "GLS", {}, weights=False, note="LibMTL returns L_i / (T prod L) as its "
             "weights, not the weights of the loss it differentiates"),)),
    Method("uncertainty", {"init_log_variance": -0.5 + LN2}, (
        Peer("libmtl", "UW", {}, scale="1/T",
             note="LibMTL's objective L/(2e^s) + s/2 starts at s = -0.5; "
             "jmtl's e^-s L + s started at s = -0.5 + ln 2 applies the same first weights, "
             "divided by T (jmtl's mean)"),),
        steps=1, note="step 1 only: LibMTL's scales move in the trainer's optimizer, not in "
        "backward"),
    Method("rlw", {}, (Peer("torchjd", "Random", {}), Peer("libmtl", "RLW", {"dist": "Normal"})),
           tasks=(3,), distribution=True,
           note="random: the distributions of the weights are compared (two-sample KS test)"),
)

NOT_COMPARED = {
    "equal_weight": "same function as mean (compared under that name)",
    "linear_scalarization": "fixed user weights: nothing to compare",
    "constant": "fixed user weights: nothing to compare",
    "random": "Dirichlet weights; no peer has that variant (LibMTL's RLW 'Dirichlet' applies "
              "a softmax to the Dirichlet draw, a different distribution)",
    "graddrop": "a random sign mask per coordinate from each library's own RNG; LibMTL's "
                "GradDrop only runs on representation gradients. Not compared",
    "gradnorm": "LibMTL's GradNorm updates its loss scales in the trainer's optimizer, through "
                "the model's last shared layer; at step 1 both weights are 1 (trivially equal)",
    "dwa": "LibMTL's DWA reads epoch-averaged losses from its trainer's buffer; no step-level "
           "counterpart",
    "imtl_l": "LibMTL has it only inside the IMTL hybrid, learned by the trainer's optimizer",
    "sdmgrad": "torchjd's SDMGradWeighting takes J1 J2^T from two independent batches, not G",
    "moco": "no peer in LibMTL 1.1.5 or torchjd 0.18",
    "db_mtl": "no peer in LibMTL 1.1.5 or torchjd 0.18",
    "famo": "no peer in LibMTL 1.1.5 or torchjd 0.18",
    "stch": "no peer in LibMTL 1.1.5 or torchjd 0.18",
}


def peer_specs(methods=METHODS) -> list[dict]:
  """The JSON the PyTorch half reads: one entry per (method, peer)."""
  return [{"method": m.name, "library": p.library, "peer": p.peer, "hparams": p.hparams,
           "tasks": list(m.tasks), "distribution": m.distribution}
          for m in methods for p in m.peers]
