"""The data package's imports run one way: no cycles, and sources/ never reads feed/."""

import ast
from pathlib import Path

import jmtl.data

ROOT = Path(jmtl.data.__file__).parent


def module_name(path: Path) -> str:
  parts = ("jmtl", "data") + path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
  """Module -> the jmtl.data modules it imports, at any depth (function-level too)."""
  modules = {module_name(p): p for p in ROOT.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jmtl.data"):
        for alias in node.names:
          full = f"{node.module}.{alias.name}"
          deps.add(full if full in modules else node.module)
      elif isinstance(node, ast.Import):
        deps.update(a.name for a in node.names if a.name in modules)
    graph[name] = {d for d in deps if d in modules and d != name}
  return graph


def test_no_import_cycles_inside_the_data_package():
  graph = import_graph()
  # The package __init__ only re-exports; a cycle through it is not a dependency.
  graph = {n: {d for d in deps if d != "jmtl.data"} for n, deps in graph.items()}
  state, cycles = {}, []

  def visit(name, stack):
    state[name] = "open"
    for dep in sorted(graph[name]):
      if state.get(dep) == "open":
        cycles.append(stack[stack.index(dep):] + [dep])
      elif dep not in state:
        visit(dep, stack + [dep])
    state[name] = "done"

  for name in sorted(graph):
    if name not in state:
      visit(name, [name])
  assert cycles == []


def test_getting_corpora_never_depends_on_feeding_the_model():
  graph = import_graph()
  assert "jmtl.data.sources.builders.common" in graph and "jmtl.data.feed.pipeline" in graph
  upstream = {n: sorted(d for d in deps if d.startswith("jmtl.data.feed"))
              for n, deps in graph.items() if n.startswith("jmtl.data.sources")}
  assert {n: d for n, d in upstream.items() if d} == {}
