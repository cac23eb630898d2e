"""The module layout: no import cycles (function-level imports counted), and only entry
points and tests import a trainer."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("nodule_jax", "data_prep", "configs", "experiments")
TRAINERS = {"nodule_jax.train_synthesis", "nodule_jax.train_classifier"}


def _modules() -> dict[str, pathlib.Path]:
  mods = {}
  for package in PACKAGES:
    for path in (ROOT / package).rglob("*.py"):
      name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
      mods[name.removesuffix(".__init__")] = path
  return mods


def import_graph() -> dict[str, set[str]]:
  """module -> the project modules it imports anywhere in its body (functions included)."""
  mods = _modules()

  def resolve(name):
    while name and name not in mods:
      name = name.rpartition(".")[0]
    return name or None

  graph = {}
  for name, path in mods.items():
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parent = package.split(".")
          parent = parent[:len(parent) - node.level + 1]
          base = ".".join(parent + ([base] if base else []))
        targets.update(f"{base}.{a.name}" for a in node.names)
        targets.add(base)
    graph[name] = {m for m in map(resolve, targets) if m and m != name}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle as [a, b, ..., a], or None (depth-first search with colours)."""
  colour, stack = {}, []

  def visit(node):
    colour[node] = "grey"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if colour.get(nxt) == "grey":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in colour:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    colour[node] = "black"
    return None

  for node in sorted(graph):
    if node not in colour:
      found = visit(node)
      if found:
        return found
  return None


def test_cycle_finder_finds_a_function_level_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles():
  graph = import_graph()
  assert "nodule_jax.inpaint" in graph and "nodule_jax.models.critic" in graph["nodule_jax.inpaint"]
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_only_entry_points_import_a_trainer():
  importers = {m for m, deps in import_graph().items() if deps & TRAINERS and m not in TRAINERS}
  assert importers and all(m.startswith("experiments.") for m in importers), importers


def test_entry_points_import_together():
  """The demo imports other entry points' functions: none may define flags at import that
  another already defined (absl's DuplicateFlagError)."""
  import subprocess
  import sys
  names = sorted(p.stem for p in (ROOT / "experiments").glob("*.py") if p.stem != "__init__")
  code = "import importlib\n" + "".join(f"importlib.import_module('experiments.{n}')\n"
                                         for n in names)
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
