"""Tests for jmtl.metrics: hand-computed cases, scipy / float64 references, seqeval."""

import math
import sys
import types

import numpy as np
import pytest
from scipy import stats

from jmtl import metrics
from jmtl.tasks import TaskKind, TaskSpec

NER_TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


# --- classification ------------------------------------------------------------------------


def test_accuracy_counts_only_masked_in_units():
  predictions = np.array([[1, 2, 0], [0, 0, 3]])
  labels = np.array([[1, 0, 0], [0, 2, 0]])
  mask = np.array([[1, 1, 0], [1, 1, 0]])
  # masked-in pairs: (1,1) ok, (2,0) wrong, (0,0) ok, (0,2) wrong -> 2 / 4
  assert metrics.accuracy(predictions, labels, mask) == 0.5
  assert metrics.accuracy(predictions, labels) == 3 / 6  # unmasked: (0,0) and (3,0) join in
  assert math.isnan(metrics.accuracy(predictions, labels, np.zeros_like(mask)))


def test_macro_f1_averages_classes_present_in_labels_or_predictions():
  labels = np.array([0, 0, 1, 1, 9])
  predictions = np.array([0, 1, 1, 2, 9])
  # class 0: TP 1, FP 0, FN 1 -> 2/(2+0+1) = 2/3
  # class 1: TP 1, FP 1, FN 1 -> 2/(2+1+1) = 1/2
  # class 2: predicted only: TP 0, FP 1 -> 0   (sklearn averages it in: labels=None)
  # class 9: TP 1 -> 1;  classes 3..8 occur nowhere and are not averaged.
  expected = (2 / 3 + 1 / 2 + 0 + 1) / 4
  assert metrics.macro_f1(predictions, labels) == pytest.approx(expected, abs=1e-12)
  mask = np.array([1, 1, 1, 0, 1])  # drops the only class-2 prediction
  # class 0: 2/3; class 1: TP 1, FP 1, FN 0 -> 2/3; class 9: 1
  assert metrics.macro_f1(predictions, labels, mask) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_mcc_hand_values():
  # binary: TP=2 (1,1), TN=1 (0,0), FP=1 (pred 1, true 0), FN=1
  labels = np.array([1, 1, 1, 0, 0])
  predictions = np.array([1, 1, 0, 0, 1])
  # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 - 1) / sqrt(3*3*2*2) = 1/6
  assert metrics.mcc(predictions, labels) == pytest.approx(1 / 6, abs=1e-12)
  # 3 classes, Gorodkin: labels 0,0,1,2 predictions 0,1,1,2
  # t = (2,1,1), p = (1,2,1), c = 3, s = 4
  # (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)) = (12 - 5) / sqrt((16-6)(16-6)) = 0.7
  assert metrics.mcc([0, 1, 1, 2], [0, 0, 1, 2]) == pytest.approx(0.7, abs=1e-12)
  # all predictions one class -> denominator 0 -> 0 (sklearn's convention)
  assert metrics.mcc([1, 1, 1], [0, 1, 2]) == 0.0
  assert metrics.mcc(labels, labels) == pytest.approx(1.0)


def _macro_f1_reference(predictions, labels):
  scores = []
  for cls in np.union1d(predictions, labels):
    tp = np.sum((predictions == cls) & (labels == cls))
    fp = np.sum((predictions == cls) & (labels != cls))
    fn = np.sum((predictions != cls) & (labels == cls))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
  return float(np.mean(scores))


def _mcc_jurman(predictions, labels):
  # Jurman et al. 2012's covariance form, O(K^3): independent of Gorodkin's trace form.
  classes = np.union1d(predictions, labels)
  k = len(classes)
  c = np.zeros((k, k))
  for t, p in zip(np.searchsorted(classes, labels), np.searchsorted(classes, predictions)):
    c[t, p] += 1
  cov_tp = sum(c[a, a] * c[m, l] - c[l, a] * c[a, m]
               for a in range(k) for m in range(k) for l in range(k))
  cov_tt = sum(c[:, a].sum() * (c.sum() - c[:, a].sum()) for a in range(k))
  cov_pp = sum(c[a, :].sum() * (c.sum() - c[a, :].sum()) for a in range(k))
  return cov_tp / np.sqrt(cov_tt * cov_pp) if cov_tt * cov_pp else 0.0


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_float64_references(seed):
  rng = np.random.default_rng(seed)
  num_classes = int(rng.integers(2, 6))
  labels = rng.integers(0, num_classes, size=40)
  # mostly right, so the scores are far from 0 and errors would show
  predictions = np.where(rng.random(40) < 0.6, labels, rng.integers(0, num_classes + 1, size=40))
  mask = rng.random(40) < 0.8
  p, l = predictions[mask], labels[mask]
  assert metrics.macro_f1(predictions, labels, mask) == pytest.approx(
      _macro_f1_reference(p, l), abs=1e-12)
  assert metrics.mcc(predictions, labels, mask) == pytest.approx(_mcc_jurman(p, l), abs=1e-12)
  assert metrics.accuracy(predictions, labels, mask) == pytest.approx(np.mean(p == l))
  binary_labels, binary_predictions = l % 2, p % 2
  assert metrics.mcc(binary_predictions, binary_labels) == pytest.approx(
      np.corrcoef(binary_predictions, binary_labels)[0, 1], abs=1e-12)


# --- regression ----------------------------------------------------------------------------


def test_pearson_and_spearman_hand_values():
  x = np.array([1.0, 2.0, 3.0])
  y = np.array([1.0, 3.0, 2.0])
  # centred: x (-1, 0, 1), y (-1, 1, 0): sum xy = 1, sum x^2 = 2, sum y^2 = 2 -> 1/2
  assert metrics.pearson(x, y) == pytest.approx(0.5)
  # ties: 10, 20, 20, 30 -> ranks 1, 2.5, 2.5, 4
  np.testing.assert_allclose(metrics.average_ranks([20.0, 10.0, 30.0, 20.0]), [2.5, 1.0, 4.0, 2.5])
  # spearman(x=(1,2,2,3), y=(1,2,3,4)): ranks (1,2.5,2.5,4) vs (1,2,3,4);
  # centred (-1.5,0,0,1.5), (-1.5,-.5,.5,1.5): sum xy = 4.5, sum x^2 = 4.5, sum y^2 = 5
  assert metrics.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
  # a masked-out outlier must not count
  with_outlier = metrics.pearson([1.0, 2.0, 3.0, 100.0], [1.0, 3.0, 2.0, -5.0], [1, 1, 1, 0])
  assert with_outlier == pytest.approx(0.5)
  assert math.isnan(metrics.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))  # constant: undefined


@pytest.mark.parametrize("seed", range(5))
def test_pearson_and_spearman_match_scipy(seed):
  rng = np.random.default_rng(seed)
  labels = rng.normal(size=50).astype(np.float32)
  predictions = (labels + rng.normal(size=50)).astype(np.float32)
  predictions[:10] = np.round(predictions[:10])  # some ties
  labels[5:15] = np.round(labels[5:15])
  mask = rng.random(50) < 0.7
  p, l = predictions[mask].astype(np.float64), labels[mask].astype(np.float64)
  assert metrics.pearson(predictions, labels, mask) == pytest.approx(
      stats.pearsonr(p, l)[0], abs=1e-10)
  assert metrics.spearman(predictions, labels, mask) == pytest.approx(
      stats.spearmanr(p, l)[0], abs=1e-10)
  np.testing.assert_allclose(metrics.average_ranks(p), stats.rankdata(p, method="average"))


# --- entity-level span F1 ------------------------------------------------------------------


@pytest.mark.parametrize("tags, expected", [
    (["O", "I-PER", "I-PER", "O"], [("PER", 1, 2)]),  # I- without B- opens an entity
    (["B-PER", "I-LOC", "O"], [("PER", 0, 0), ("LOC", 1, 1)]),  # type change mid-entity
    (["O", "B-LOC", "I-LOC"], [("LOC", 1, 2)]),  # entity at sequence end is closed
    (["B-PER", "B-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 2)]),  # B- after B- splits
    (["I-LOC", "B-LOC"], [("LOC", 0, 0), ("LOC", 1, 1)]),
    (["O", "O"], []),
    ([], []),
])
def test_bio_entities_lenient_chunking(tags, expected):
  assert metrics.bio_entities(tags) == expected


def test_entity_scores_hand_case():
  gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", "I-LOC"]]
  predicted = [["B-PER", "I-PER", "O", "O"], ["O", "I-LOC", "I-LOC"]]
  # gold: PER(0,0-1), LOC(0,3-3), LOC(1,1-2); predicted: PER(0,0-1), LOC(1,1-2) (I- opens)
  # correct 2, P = 2/2 = 1, R = 2/3, F1 = 2 * 1 * 2/3 / (5/3) = 0.8
  scores = metrics.entity_scores(predicted, gold)
  assert (scores.num_gold, scores.num_predicted, scores.num_correct) == (3, 2, 2)
  assert scores.precision == 1.0
  assert scores.recall == pytest.approx(2 / 3)
  assert scores.f1 == pytest.approx(0.8)


def test_entity_scores_drop_masked_positions_before_chunking():
  # ids over NER_TAGS; position 2 is a sub-word (mask 0) and 4-5 are padding.
  gold = np.array([[1, 2, 0, 2, 0, 0]])  # words: B-PER I-PER I-PER O
  predicted = np.array([[1, 2, 3, 2, 0, 3]])  # words: B-PER I-PER I-PER O; sub-word says B-LOC
  mask = np.array([[1, 1, 0, 1, 1, 0]])
  scores = metrics.entity_scores(predicted, gold, NER_TAGS, mask)
  # the masked B-LOC would otherwise split PER(0-2); without the mask predictions differ
  assert (scores.num_gold, scores.num_predicted, scores.num_correct) == (1, 1, 1)
  assert scores.f1 == 1.0
  assert metrics.entity_scores(predicted, gold, NER_TAGS).f1 < 1.0


def test_entity_scores_empty_predictions_and_no_words():
  gold = [["B-PER", "O"], ["O", "O"]]
  nothing = metrics.entity_scores([["O", "O"], ["O", "O"]], gold)
  # no predicted entity: P = 0 (conlleval), R = 0/1 = 0, F1 = 0
  assert (nothing.precision, nothing.recall, nothing.f1) == (0.0, 0.0, 0.0)
  no_entities = metrics.entity_scores([["O", "O"]], [["O", "O"]])
  assert no_entities.f1 == 0.0  # conlleval prints 0.00 when there is nothing to find
  no_words = metrics.entity_scores(
      np.array([[1, 2]]), np.array([[1, 2]]), NER_TAGS, mask=np.zeros((1, 2)))
  assert math.isnan(no_words.f1)


def test_entity_scores_require_label_names_for_ids():
  with pytest.raises(ValueError, match="label_names"):
    metrics.entity_scores(np.array([[1, 0]]), np.array([[1, 0]]))


@pytest.fixture(scope="module")
def seqeval_metrics():
  # seqeval imports one warning class from scikit-learn; the project does not install
  # sklearn, so stand in for that single name when it is missing.
  with pytest.MonkeyPatch.context() as patch:
    try:
      import sklearn.exceptions  # noqa: F401
    except ImportError:
      exceptions = types.ModuleType("sklearn.exceptions")
      exceptions.UndefinedMetricWarning = type("UndefinedMetricWarning", (UserWarning,), {})
      sklearn = types.ModuleType("sklearn")
      sklearn.exceptions = exceptions
      patch.setitem(sys.modules, "sklearn", sklearn)
      patch.setitem(sys.modules, "sklearn.exceptions", exceptions)
    from seqeval import metrics as seqeval_module
  return seqeval_module


@pytest.mark.filterwarnings("ignore")  # seqeval warns on 0/0 precision or recall
@pytest.mark.parametrize("seed", range(8))
def test_entity_scores_match_seqeval_default_mode(seqeval_metrics, seed):
  rng = np.random.default_rng(seed)
  tag_set = NER_TAGS + ("B-ORG", "I-ORG")
  weights = np.array([6, 2, 2, 2, 2, 1, 1], dtype=float)  # enough O to separate entities
  lengths = rng.integers(0, 9, size=6)

  def sample():
    return [list(rng.choice(tag_set, size=n, p=weights / weights.sum())) for n in lengths]

  gold, predicted = sample(), sample()
  for row in range(0, len(gold), 2):  # half the rows agree mostly, so F1 is not ~0
    predicted[row] = [g if rng.random() < 0.8 else p for g, p in zip(gold[row], predicted[row])]
  ours = metrics.entity_scores(predicted, gold)
  assert ours.precision == pytest.approx(
      seqeval_metrics.precision_score(gold, predicted), abs=1e-12)
  assert ours.recall == pytest.approx(seqeval_metrics.recall_score(gold, predicted), abs=1e-12)
  assert ours.f1 == pytest.approx(seqeval_metrics.f1_score(gold, predicted), abs=1e-12)


# --- QA spans and MLM ----------------------------------------------------------------------


def test_qa_exact_match_and_overlap_f1():
  predicted = np.array([[3, 5], [2, 4], [7, 6], [0, 0], [9, 9]])
  gold = np.array([[3, 5], [3, 6], [6, 7], [1, 2], [0, 0]])
  mask = np.array([1, 1, 1, 1, 0])
  # ex0 exact: F1 1. ex1: pred {2,3,4}, gold {3..6}: overlap 2 -> 2*2/(3+4) = 4/7.
  # ex2: end < start, empty -> 0. ex3: disjoint -> 0. ex4 masked out.
  assert metrics.qa_exact_match(predicted, gold, mask) == 0.25
  assert metrics.qa_span_f1(predicted, gold, mask) == pytest.approx((1 + 4 / 7) / 4)
  assert metrics.qa_exact_match(predicted, gold) == 0.2


def test_perplexity_is_exp_mean_loss():
  assert metrics.perplexity(6.0, 3.0) == pytest.approx(math.exp(2.0))
  assert math.isnan(metrics.perplexity(0.0, 0.0))
  assert metrics.perplexity(1e6, 1.0) == math.inf


# --- dispatcher ----------------------------------------------------------------------------


def test_task_metrics_classification_and_regression():
  spec = TaskSpec("sst2", TaskKind.CLASSIFICATION, num_labels=2, metrics=("accuracy", "mcc"))
  out = metrics.task_metrics(spec, np.array([1, 0, 1, 1]), np.array([1, 0, 0, 0]),
                             np.array([1, 1, 1, 0.0]), loss_sum=1.5, count=3.0)
  # masked-in: (1,1) (0,0) (1,0) -> accuracy 2/3;
  # mcc: TP 1, TN 1, FP 1, FN 0 -> (1 - 0) / sqrt(2*1*1*2) = 1/2
  assert out == pytest.approx({"loss": 0.5, "accuracy": 2 / 3, "mcc": 0.5})
  spec = TaskSpec("stsb", TaskKind.REGRESSION)
  out = metrics.task_metrics(spec, np.array([[1.0], [2.0], [3.0]]), np.array([1.0, 3.0, 2.0]),
                             np.ones(3), loss_sum=2.0, count=3.0)
  assert out == pytest.approx({"loss": 2 / 3, "pearson": 0.5, "spearman": 0.5})


def test_task_metrics_tagging_uses_bio_label_names():
  spec = TaskSpec("ner", TaskKind.TAGGING, num_labels=5, label_names=NER_TAGS,
                  metrics=("accuracy", "span_f1", "span_precision", "span_recall"))
  labels = np.array([[1, 2, 0, 3], [0, 3, 4, 0]])
  predictions = np.array([[1, 2, 0, 0], [0, 3, 4, 1]])
  mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])
  out = metrics.task_metrics(spec, predictions, labels, mask, loss_sum=0.7, count=7.0)
  # tokens: 6 of 7 masked-in agree (row 0 pos 3). Entities: gold 3, predicted 2, correct 2.
  assert out == pytest.approx({"loss": 0.1, "accuracy": 6 / 7, "span_f1": 0.8,
                               "span_precision": 1.0, "span_recall": 2 / 3})


def test_task_metrics_span_qa_and_mlm():
  spec = TaskSpec("squad", TaskKind.SPAN_QA)
  out = metrics.task_metrics(spec, np.array([[3, 5], [2, 4]]), np.array([[3, 5], [3, 6]]),
                             np.ones(2), loss_sum=4.0, count=2.0)
  # window-level token indices; "f1" is replaced by answer-text F1 in jmtl.train.qa_eval
  assert out == pytest.approx({"loss": 2.0, "exact_match": 0.5, "f1": (1 + 4 / 7) / 2})
  spec = TaskSpec("mlm", TaskKind.MLM, num_labels=100)
  out = metrics.task_metrics(spec, np.array([[5, 7, 9]]), np.array([[5, 8, 0]]),
                             np.array([[1, 1, 0]]), loss_sum=3.0, count=2.0)
  assert out == pytest.approx({"loss": 1.5, "accuracy": 0.5, "perplexity": math.exp(1.5)})


def test_task_metrics_errors_and_empty_eval():
  # An unknown metric fails when the spec is built, naming the valid ones.
  with pytest.raises(ValueError, match=r"'sst2'.*'pearson'.*macro_f1"):
    TaskSpec("sst2", TaskKind.CLASSIFICATION, num_labels=2, metrics=("accuracy", "pearson"))
  for kind in TaskKind:  # every default is a metric evaluation computes
    spec = TaskSpec("t", kind, num_labels=1 if kind == TaskKind.REGRESSION else 2)
    assert set(spec.metrics) <= set(metrics.valid_metrics(kind))
  spec = TaskSpec("ner", TaskKind.TAGGING, num_labels=3, metrics=("span_f1",))
  with pytest.raises(ValueError, match="label_names"):
    metrics.task_metrics(spec, np.zeros((1, 2)), np.zeros((1, 2)), np.ones((1, 2)), 0.0, 2.0)
  spec = TaskSpec("cola", TaskKind.CLASSIFICATION, num_labels=2)
  with pytest.raises(ValueError, match="'cola'.*shape"):
    metrics.task_metrics(spec, np.zeros(3), np.zeros(2), np.ones(2), 0.0, 2.0)
  out = metrics.task_metrics(spec, np.zeros(2), np.zeros(2), np.zeros(2), 0.0, 0.0)
  assert all(math.isnan(v) for v in out.values()) and set(out) == {"loss", "accuracy", "macro_f1"}


# --- multi-task summary ---------------------------------------------------------------------


def test_delta_m_mixed_directions():
  results = {"sst2": 0.90, "stsb": 0.88, "mlm": 5.0}
  baselines = {"sst2": 0.80, "stsb": 0.88, "mlm": 4.0}
  higher = {"sst2": True, "stsb": True, "mlm": False}
  # sst2: +(0.90-0.80)/0.80 = +0.125; stsb: 0; mlm (lower better): -(5-4)/4 = -0.25
  # 100/3 * (0.125 + 0 - 0.25) = -4.1666...
  assert metrics.delta_m(results, baselines, higher) == pytest.approx(-12.5 / 3)
  assert metrics.delta_m(baselines, baselines, higher) == 0.0


def test_delta_m_errors():
  with pytest.raises(ValueError, match="'stsb'"):
    metrics.delta_m({"sst2": 0.9, "stsb": 0.8}, {"sst2": 0.8}, {"sst2": True, "stsb": True})
  with pytest.raises(ValueError, match="'sst2'.*0.0"):
    metrics.delta_m({"sst2": 0.9}, {"sst2": 0.0}, {"sst2": True})
  with pytest.raises(ValueError):
    metrics.delta_m({}, {}, {})


def test_main_metric_results_feeds_delta_m():
  tasks = (TaskSpec("sst2", TaskKind.CLASSIFICATION, num_labels=2),
           TaskSpec("mlm", TaskKind.MLM, num_labels=10, main_metric="perplexity",
                    higher_is_better=False))
  table = {"sst2": {"accuracy": 0.9, "macro_f1": 0.8}, "mlm": {"accuracy": 0.3, "perplexity": 5.0}}
  results, higher = metrics.main_metric_results(tasks, table)
  assert results == {"sst2": 0.9, "mlm": 5.0} and higher == {"sst2": True, "mlm": False}
  with pytest.raises(ValueError, match="'mlm'"):
    metrics.main_metric_results(tasks, {"sst2": table["sst2"], "mlm": {}})


def test_summarize_results_fixed_width_table():
  text = metrics.summarize_results(
      {"sst2": {"accuracy": 0.9, "loss": 0.25}, "stsb": {"loss": 0.5, "pearson": 0.875}},
      main_metrics={"sst2": "accuracy", "stsb": "pearson"}, delta=1.5, digits=3)
  lines = text.splitlines()
  assert lines[0].split() == ["task", "loss", "accuracy", "pearson"]  # loss first
  assert lines[2].split() == ["sst2", "0.250", "0.900*", "-"]
  assert lines[3].split() == ["stsb", "0.500", "-", "0.875*"]
  # fixed width: every value ends in the same column as its header
  for row in lines[2:4]:
    assert len(row.rstrip()) <= len(lines[1])
  assert lines[0].index("accuracy") + len("accuracy") == lines[2].index("0.900*") + len("0.900")
  assert lines[-1] == "delta_m: +1.50%"


# --- multi-label ----------------------------------------------------------------------------


def test_multi_label_metrics_hand_computed():
  # 3 examples x 3 labels; probabilities thresholded at 0.5.
  probabilities = np.array([[0.9, 0.2, 0.7], [0.6, 0.8, 0.1], [0.1, 0.3, 0.4]])
  gold = np.array([[1, 0, 1], [0, 1, 0], [0, 1, 0]])
  # predicted: [1,0,1], [1,1,0], [0,0,0]
  # label 0: TP 1 FP 1 FN 0 -> F1 2/3; label 1: TP 1 FP 0 FN 1 -> 2/3; label 2: TP 1 -> 1
  # micro: TP 3, predicted 4, gold 4 -> 6/8
  assert metrics.micro_f1(probabilities, gold) == pytest.approx(0.75)
  assert metrics.multilabel_macro_f1(probabilities, gold) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
  assert metrics.subset_accuracy(probabilities, gold) == pytest.approx(1 / 3)
  # masking out example 1 leaves TP 2, predicted 2, gold 3 -> 4/5
  assert metrics.micro_f1(probabilities, gold, np.array([1, 0, 1])) == pytest.approx(0.8)
  # a label never gold nor predicted scores 0 in the macro mean (sklearn's convention)
  assert metrics.multilabel_macro_f1(probabilities[:, :1] * 0, gold[:, :1] * 0) == 0.0
  # threshold 0.25 also predicts 0.3 and 0.4: label 1 of example 3 is right, 2 is wrong
  # TP 4, predicted 6, gold 4 -> 8/10; the grid's best is found
  assert metrics.micro_f1(probabilities, gold, threshold=0.25) == pytest.approx(0.8)
  threshold, score = metrics.best_threshold(probabilities, gold)
  assert score >= 0.8 and score == pytest.approx(metrics.micro_f1(probabilities, gold,
                                                                  threshold=threshold))


def test_task_metrics_multi_label_uses_spec_threshold():
  spec = TaskSpec("tags", TaskKind.MULTI_LABEL, num_labels=3, threshold=0.25,
                  metrics=("micro_f1", "best_threshold"))
  probabilities = np.array([[0.9, 0.2, 0.7], [0.6, 0.8, 0.1], [0.1, 0.3, 0.4]])
  gold = np.array([[1, 0, 1], [0, 1, 0], [0, 1, 0]], np.float32)
  out = metrics.task_metrics(spec, probabilities, gold, np.ones(3), 1.5, 3.0)
  assert out["micro_f1"] == pytest.approx(0.8) and 0.05 <= out["best_threshold"] <= 0.95
