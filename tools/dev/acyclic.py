"""An import-linter contract: no import cycle between any modules of the given packages.

import-linter's own ``acyclic_siblings`` looks at siblings, so a module that imports its own
package's ``__init__`` while the package imports it back slips through; this contract looks at
every module, counting imports made inside functions too (a lazy import is still an import).
It is registered in ``pyproject.toml`` (``[tool.importlinter]``) and runs in ``make test``
through ``lint-imports``.
"""

from __future__ import annotations

from importlinter import Contract, ContractCheck, fields, output


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, and the modules that import
    themselves, each as a sorted list (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1 or node in edges.get(node, ()):
                    found.append(sorted(component))
    return sorted(found)


class AcyclicContract(Contract):
    """``containers``: the packages whose modules must not import each other in a circle."""

    type_name = "acyclic"

    containers = fields.ListField(subfield=fields.StringField())

    def check(self, graph, verbose: bool) -> ContractCheck:  # noqa: ANN001 - grimp's graph
        """Kept when no cycle joins modules of the containers."""
        roots = tuple(self.containers)  # type: ignore[arg-type]

        def ours(module: str) -> bool:
            return any(module == r or module.startswith(r + ".") for r in roots)

        edges = {
            m: {i for i in graph.find_modules_directly_imported_by(m) if ours(i)}
            for m in graph.modules
            if ours(m)
        }
        found = cycles(edges)
        details = []
        for component in found:
            members = set(component)
            details.append(
                [
                    (a, b, graph.get_import_details(importer=a, imported=b))
                    for a in component
                    for b in sorted(edges[a] & members)
                ]
            )
        return ContractCheck(kept=not found, metadata={"cycles": found, "details": details})

    def render_broken_contract(self, check: ContractCheck) -> None:
        """One paragraph per cycle: its modules, then each import that closes it."""
        for component, imports in zip(
            check.metadata["cycles"], check.metadata["details"], strict=True
        ):
            output.print_error(f"Import cycle between {', '.join(component)}:")
            for importer, imported, lines in imports:
                where = ", ".join(f"l.{d['line_number']}" for d in lines) or "?"
                output.print_error(f"  {importer} -> {imported} ({where})", bold=False)
            output.new_line()
