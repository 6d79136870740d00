"""No import cycle among resnet_jax's modules: each dependency runs one way,
so any module can be read (and imported) without the ones that use it.

Read with ast, nothing is imported; imports inside functions count too (a
lazy import hides a cycle, it does not remove it)."""
import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'resnet_jax'


def modules() -> dict:
  """{dotted module name: file path} of every module of the package."""
  found = {}
  for root, _, files in os.walk(os.path.join(REPO, PACKAGE)):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(root, name)
        parts = os.path.relpath(path, REPO)[:-len('.py')].split(os.sep)
        if parts[-1] == '__init__':
          parts.pop()
        found['.'.join(parts)] = path
  return found


def imports(path: str, module: str, known) -> set:
  """The package's modules that `module` (at `path`) imports."""
  is_package = path.endswith('__init__.py')
  out = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:  # Relative: resolved against this module's package.
        here = module.split('.')[:len(module.split('.')) - node.level
                                   + is_package]
        base = '.'.join(here + ([base] if base else []))
      for alias in node.names:
        # `from P import x`: x is a module of P, or a name defined in P.
        full = f'{base}.{alias.name}'
        out.add(full if full in known else base)
  return {name for name in out if name in known and name != module}


def find_cycle(graph: dict):
  """One cycle of `graph` ({node: set of nodes}) as a list, or None."""
  state = {}  # node -> 'open' while on the DFS stack, 'done' after.

  def visit(node, stack):
    state[node] = 'open'
    for child in sorted(graph[node]):
      if state.get(child) == 'open':
        return stack[stack.index(child):] + [child]
      if child not in state:
        cycle = visit(child, stack + [child])
        if cycle:
          return cycle
    state[node] = 'done'
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node, [node])
      if cycle:
        return cycle
  return None


def import_graph() -> dict:
  known = modules()
  return {name: imports(path, name, known) for name, path in known.items()}


def test_the_graph_sees_the_imports():
  graph = import_graph()
  assert {'resnet_jax.train', 'resnet_jax.predict',
          'resnet_jax.evaluate'} <= graph['resnet_jax.main']
  assert 'resnet_jax.predict' in graph['resnet_jax.evaluate']
  assert 'resnet_jax.data.folder' in graph['resnet_jax.data']  # Its __init__.
  assert 'resnet_jax.data' in graph['resnet_jax.data.stream']


def test_no_import_cycle():
  cycle = find_cycle(import_graph())
  assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_find_cycle_reports_one():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c',
                                                              'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) is None
