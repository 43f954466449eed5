"""The PyTorch side of ``benchmarks/pretrained.py``: Hugging Face ``transformers.BertModel``.

Runs in benchmarks/peers/.venv (torch, transformers; ``setup.sh``). Spawned by
benchmarks/pretrained.py as a worker (the same JSON-lines protocol as ``run_torch.py``):
``setup`` builds the model from the checkpoint's config.json and model.safetensors (the very
file jmtl loads) plus jmtl's exported head weights, and answers the first forward's losses;
``round`` runs ``settle`` untimed, then ``steps`` timed EW steps; ``quit`` ends.

Model: BertModel (no pooler, dropout off, transformers' default SDPA attention), mean pool over
real tokens, per task Linear(D, 64) + ReLU + Linear(64, C); multi-input: each task's batch has
its own forward; the EW step is one backward of the mean of the T mean cross-entropies, then
Adam(1e-3).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch import nn  # noqa: E402
from transformers import BertConfig, BertModel  # noqa: E402

from run_torch import load_batches, log, set_threads  # noqa: E402
from torch_model import Head, _tensor  # noqa: E402
from weights import load_params  # noqa: E402


class BertMultiTask(nn.Module):
  def __init__(self, model_dir: pathlib.Path, heads: dict, task_names):
    super().__init__()
    config = BertConfig.from_json_file(str(model_dir / "config.json"))
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    self.bert = BertModel(config, add_pooling_layer=False)
    state = {k: v for k, v in load_file(str(model_dir / "model.safetensors")).items()
             if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    missing, unexpected = self.bert.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "embeddings.position_ids"]  # a buffer
    if missing or unexpected:
      raise ValueError(f"checkpoint mismatch: missing {missing}, unexpected {unexpected}")
    self.task_names = tuple(task_names)
    self.heads = nn.ModuleDict()
    for name in self.task_names:
      source = heads[name]
      head = Head(config.hidden_size, source["hidden"]["kernel"].shape[1],
                  source["out"]["kernel"].shape[1])
      for layer in ("hidden", "out"):
        getattr(head, layer).weight.data = _tensor(source[layer]["kernel"].T)
        getattr(head, layer).bias.data = _tensor(source[layer]["bias"])
      self.heads[name] = head

  def loss(self, name: str, batch) -> torch.Tensor:
    mask = batch["attention_mask"]
    tokens = self.bert(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    return F.cross_entropy(self.heads[name](pooled), batch[name].long())  # label key = name


def worker() -> None:
  model = optimizer = batches = None
  for line in sys.stdin:
    command = json.loads(line)
    if command["cmd"] == "setup":
      names = command["task_names"]
      batches = load_batches(command["batches"], names, "multi_input")
      heads = load_params(command["heads"])["heads"]
      model = BertMultiTask(pathlib.Path(command["model_dir"]), heads, names)
      model.train()
      optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
      with torch.no_grad():
        losses = [model.loss(n, batches[n]).item() for n in names]
      log(f"run_bert_torch: {sum(p.numel() for p in model.parameters())} parameters")
      answer = {"first_losses": losses}
    elif command["cmd"] == "round":
      def step():
        optimizer.zero_grad(set_to_none=True)
        torch.stack([model.loss(n, batches[n]) for n in model.task_names]).mean().backward()
        optimizer.step()
      for _ in range(command.get("settle", 0)):  # untimed (see compare.py, --settle)
        step()
      times = []
      for _ in range(command["steps"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
      answer = {"times": {"ew": times}}
    elif command["cmd"] == "quit":
      return
    else:
      raise ValueError(f"unknown command {command!r}")
    print(json.dumps(answer), flush=True)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--worker", action="store_true", required=True)
  parser.add_argument("--threads", type=int, default=1)
  parser.add_argument("--pin", action="store_true")
  args = parser.parse_args()
  set_threads(args.threads, args.pin)
  worker()


if __name__ == "__main__":
  main()
