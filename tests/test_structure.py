"""The package's shape: no import cycle between wm_jax modules (imports inside functions
count too: a lazy import only hides a circle), and no module grown past a reader's page count."""

from __future__ import annotations

import ast
import os
import re

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "wm_jax")


def _modules() -> dict[str, str]:
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[: -len(".py")]
                module = rel.replace(os.sep, ".").removesuffix(".__init__")
                found[module] = path
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                # The package's lazy public-API table (wm_jax/__init__.py) is not an edge.
                if name in modules and name != module and name != "wm_jax":
                    graph[module].add(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_wm_jax():
    assert find_cycle(import_graph()) is None, find_cycle(import_graph())


MAX_MODULE_LINES = 500


def test_no_module_is_longer_than_a_readers_page_count():
    long = {}
    for module, path in _modules().items():
        with open(path) as f:
            lines = sum(1 for _ in f)
        if lines > MAX_MODULE_LINES:
            long[module] = lines
    assert not long, f"split these modules by concept (over {MAX_MODULE_LINES} lines): {long}"


def test_docs_config_md_is_the_generated_reference_and_every_field_is_explained():
    from wm_jax.config_reference import config_reference

    path = os.path.join(os.path.dirname(PACKAGE), "docs", "config.md")
    with open(path) as f:
        committed = f.read()
    generated = config_reference()
    assert committed == generated, (
        "docs/config.md is stale: python -m wm_jax.config_reference > docs/config.md"
    )
    unexplained = [line for line in generated.splitlines() if line.endswith("|  |")]
    assert not unexplained, f"config fields without a comment in wm_jax/config.py: {unexplained}"


def _test_names(path: str) -> set[str]:
    with open(path) as f:
        tree = ast.parse(f.read())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def cited_tests(text: str) -> list[tuple[str, str]]:
    """``tests/x.py::test_name`` references in a document (parametrisation ids dropped)."""
    import re

    return [(m[0], m[1]) for m in re.findall(r"(tests/[\w/]+\.py)::(test_\w+)", text)]


def test_every_test_cited_in_the_docs_exists():
    root = os.path.dirname(PACKAGE)
    docs = [os.path.join(root, "README.md"), os.path.join(root, "BUILD_NOTES.md")]
    docs += [os.path.join(root, "docs", n) for n in os.listdir(os.path.join(root, "docs"))]
    missing, cited = [], 0
    for doc in docs:
        with open(doc) as f:
            for file, name in cited_tests(f.read()):
                cited += 1
                path = os.path.join(root, file)
                if not os.path.exists(path) or name not in _test_names(path):
                    missing.append(f"{os.path.basename(doc)}: {file}::{name}")
    assert cited >= 20  # the claims table itself is read
    assert not missing, missing


def test_the_citation_check_catches_a_missing_test():
    assert cited_tests("see `tests/test_api.py::test_nope[x]`") == [
        ("tests/test_api.py", "test_nope")
    ]


def test_docs_reading_a_run_explains_every_failure_signature():
    from wm_jax.diagnostics import MODES

    path = os.path.join(os.path.dirname(PACKAGE), "docs", "reading_a_run.md")
    with open(path) as f:
        text = f.read()
    missing = [mode for mode in MODES if f"| `{mode}` |" not in text]
    assert not missing, f"docs/reading_a_run.md has no row for {missing}"


def _github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_link_of_the_user_guide_reaches_a_file_and_heading():
    repo = os.path.dirname(PACKAGE)
    guide = os.path.join(repo, "docs", "README.md")
    links = re.findall(r"\]\(([^)#]+)(?:#([^)]+))?\)", open(guide).read())
    assert len(links) >= 10
    for path, anchor in links:
        target = os.path.normpath(os.path.join(repo, "docs", path))
        assert os.path.exists(target), path
        if anchor:
            headings = re.findall(r"^#+ (.+)$", open(target).read(), re.M)
            assert anchor in {_github_anchor(h) for h in headings}, (path, anchor)
