"""tools/dev/acyclic.py: the import-linter contract that refuses any import cycle."""

from __future__ import annotations

from tools.dev.acyclic import AcyclicContract, cycles


class Graph:
    """The part of grimp's ImportGraph the contract reads."""

    def __init__(self, edges: dict[str, set[str]]) -> None:
        self.edges = edges
        self.modules = set(edges) | {m for ms in edges.values() for m in ms}

    def find_modules_directly_imported_by(self, module: str) -> set[str]:
        return self.edges.get(module, set())

    def get_import_details(self, importer: str, imported: str) -> list[dict]:
        return [{"importer": importer, "imported": imported, "line_number": 7, "line_contents": ""}]


def test_a_tree_of_imports_has_no_cycle() -> None:
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_every_cycle_is_found_once_with_its_modules() -> None:
    edges = {
        "p.a": {"p.b"},
        "p.b": {"p.c"},
        "p.c": {"p.a", "q"},  # p.a -> p.b -> p.c -> p.a
        "q": {"r"},
        "r": {"q"},  # a second, separate cycle
        "s": {"s"},  # a module that imports itself
        "t": {"q"},
    }
    assert cycles(edges) == [["p.a", "p.b", "p.c"], ["q", "r"], ["s"]]


def test_a_package_importing_its_module_that_imports_it_back_is_a_cycle() -> None:
    assert cycles({"firmware": {"firmware.node"}, "firmware.node": {"firmware"}}) == [
        ["firmware", "firmware.node"]
    ]


def _contract(containers: list[str]) -> AcyclicContract:
    return AcyclicContract(
        name="no cycles", session_options={}, contract_options={"containers": containers}
    )


def test_the_contract_breaks_on_a_cycle_inside_its_containers_only() -> None:
    graph = Graph({"cloud.a": {"cloud.b"}, "cloud.b": {"cloud.a"}, "ext.x": {"ext.y"}, "ext.y": {"ext.x"}})
    check = _contract(["cloud"]).check(graph, verbose=False)
    assert not check.kept
    assert check.metadata["cycles"] == [["cloud.a", "cloud.b"]]
    assert _contract(["shared"]).check(graph, verbose=False).kept


def test_the_contract_keeps_a_cycle_free_graph() -> None:
    graph = Graph({"tools.a": {"tools.b", "shared.c"}, "tools.b": {"shared.c"}})
    assert _contract(["tools", "shared"]).check(graph, verbose=False).kept
