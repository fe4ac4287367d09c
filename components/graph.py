"""The causal graph a run declares (`tauforge run --graph FILE`, the pipeline parameter `graph`):
read, checked against the data's roles, and recorded in the model card. This module is the one
owner of that contract: the CLI, the pipeline's validate and publish steps and the store's card
diff import it.

Formats: the two DoWhy accepts, so a graph written for DoWhy works as it is.
- DOT (Graphviz), parsed by pydot: `digraph { Z -> T; Z -> Y; T -> Y; U [observed="no"]; U -> Y }`.
  Edge chains (`A -> B -> C`), node groups (`{A B} -> C`), subgraphs, comments and attributes are
  read as Graphviz reads them; attributes other than `observed` are ignored.
- GML, parsed by networkx: `graph [ directed 1 node [ id "T" label "T" ] ... edge [ source "T"
  target "Y" ] ]`, nodes named by their label.
A node is latent (unobserved, not a column of the data) when its attribute `observed` is "no", as
in DoWhy. Every other node must be a column of the data.

What is checked, before any task runs: the graph is directed and acyclic; treatment and outcome
are observed nodes; every covariate and control is an observed node; no covariate or control is a
descendant of the treatment; and the covariates and controls together block every back-door path
from treatment to outcome (they d-separate the two once the treatment's outgoing edges are
removed: Pearl's back-door criterion). A failure names the path or the descendant. When the run
names no covariates, they are derived from the graph: every observed node that is neither
treatment, outcome, a control nor a descendant of the treatment. The graph algorithms are
networkx's (d-separation, descendants, cycles, minimal separators); only whether one given path is
open is decided here, to name it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from .config import ConfigError

FORMATS = ("dot", "gml")
# DoWhy's node attribute: observed="no" marks a latent node.
LATENT_ATTRIBUTE = "observed"
_NO = ("no", "false", "0")
# Attribute statements of DOT (`node [shape=box]`), which pydot lists as nodes of these names.
_DOT_KEYWORDS = ("node", "edge", "graph")
# What may hold '--' in DOT text without being an edge: quoted strings and comments.
_DOT_NOISE = re.compile(r'"(?:[^"\\]|\\.)*"|//[^\n]*|/\*.*?\*/|^\s*#[^\n]*', re.DOTALL | re.MULTILINE)
# A DOT ID at an edge's end, without the port after it (A:p, "a b":p:n).
_DOT_ID = re.compile(r'"(?:[^"\\]|\\.)*"|[^:]*')
# GML opens with `graph [`, possibly after comments and top-level `key value` pairs (Creator,
# Version, comment: a review's file opened with `comment "..."`, which the tasks, reading the text
# without its file name, took for DOT); DOT with `digraph {`. Items are whitespace-separated and
# values hold no brackets, so a long DOT text fails the match in linear time.
_GML_START = re.compile(r'\s*(?:(?:#[^\n]*|[A-Za-z_]\w*[ \t]+(?:"[^"]*"|[^\s\[\]{}"]+))\s+)*graph\s*\[')
NO_GRAPH = "no causal graph was given: the adjustment set rests on the assumptions above alone, unchecked"


class GraphError(ConfigError):
    """A graph that cannot be read or does not fit the run's roles (the setting `graph`)."""

    def __init__(self, problem: str):
        super().__init__("graph", problem)


@dataclass(frozen=True)
class CausalGraph:
    """A causal DAG over the data's columns and declared latent variables.

    nodes : every node, in the order the file first names them; edges : (cause, effect) pairs;
    latent : the nodes that are not columns of the data; format : 'dot' or 'gml', what it was read
    from; text : the file's text as given (what the pipeline parameter carries)."""

    nodes: tuple[str, ...]
    edges: tuple[tuple[str, str], ...]
    latent: tuple[str, ...] = ()
    format: str = "dot"
    text: str = field(default="", compare=False, repr=False)

    def __post_init__(self):
        nodes, edges = tuple(dict.fromkeys(self.nodes)), tuple(dict.fromkeys(tuple(e) for e in self.edges))
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "edges", edges)
        object.__setattr__(self, "latent", tuple(dict.fromkeys(self.latent)))
        if self.format not in FORMATS:
            raise GraphError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not nodes:
            raise GraphError("has no nodes")
        known = set(nodes)
        for cause, effect in edges:
            for name in (cause, effect):
                if name not in known:
                    raise GraphError(f"has an edge {cause} -> {effect} whose node {name!r} is not among its nodes")
        for name in self.latent:
            if name not in known:
                raise GraphError(f"declares {name!r} latent but has no such node")
        import networkx as nx

        dag = self.dag()
        if not nx.is_directed_acyclic_graph(dag):
            cycle = [cause for cause, _ in nx.find_cycle(dag)]
            raise GraphError(f"has a cycle, {' -> '.join([*cycle, cycle[0]])}: a causal graph must be acyclic")

    # ------------------------------------------------------------------ reading
    @classmethod
    def parse(cls, text: str, format: str | None = None) -> CausalGraph:
        """A graph from DOT or GML text (`format` None: told apart by how the text opens)."""
        if isinstance(text, str):
            text = text.lstrip("\ufeff")  # a byte-order mark, as Windows editors write: invisible in an error
        if not isinstance(text, str) or not text.strip():
            raise GraphError("is empty: give a DOT or GML graph")
        format = format or ("gml" if _GML_START.match(text) else "dot")
        if format == "dot":
            nodes, edges, latent = _read_dot(text)
        elif format == "gml":
            nodes, edges, latent = _read_gml(text)
        else:
            raise GraphError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        return cls(tuple(nodes), tuple(edges), tuple(latent), format, text)

    @classmethod
    def read(cls, path: str) -> CausalGraph:
        """A graph from a file (a path or an fsspec URI): GML for a .gml file, else DOT."""
        import fsspec

        try:
            with fsspec.open(path, "r", encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise GraphError(f"cannot be read from {path!r}: {exc}") from None
        return cls.parse(text, "gml" if path.lower().endswith(".gml") else None)

    @classmethod
    def from_dict(cls, entry: dict) -> CausalGraph:
        """The graph of a card's `graph` section (`to_dict`)."""
        return cls(tuple(entry["nodes"]), tuple(tuple(e) for e in entry["edges"]), tuple(entry.get("latent", ())),
                   entry.get("format", "dot"))

    # ------------------------------------------------------------------ as data
    @property
    def observed(self) -> tuple[str, ...]:
        return tuple(n for n in self.nodes if n not in set(self.latent))

    @property
    def sha256(self) -> str:
        """The graph's identity: sha256 of its nodes, edges and latent nodes, each sorted. Formatting,
        comments, the order of statements and the file's format do not change it."""
        from tauforge.kernels.serialization import sha256_text

        return sha256_text(json.dumps({"nodes": sorted(self.nodes), "edges": sorted(map(list, self.edges)),
                                       "latent": sorted(self.latent)}, sort_keys=True))

    def to_dict(self) -> dict:
        """The graph as the card records it."""
        return {"format": self.format, "nodes": list(self.nodes), "edges": [list(e) for e in self.edges],
                "latent": list(self.latent), "sha256": self.sha256}

    def to_dot(self) -> str:
        """The graph as DOT text, latent nodes marked observed="no"."""
        def q(name: str) -> str:
            return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'

        lines = [f"  {q(n)}" + (' [observed="no"]' if n in self.latent else "") + ";" for n in self.nodes]
        lines += [f"  {q(a)} -> {q(b)};" for a, b in self.edges]
        return "digraph {\n" + "\n".join(lines) + "\n}\n"

    def dag(self):
        """The graph as a networkx DiGraph."""
        import networkx as nx

        dag = nx.DiGraph()
        dag.add_nodes_from(self.nodes)
        dag.add_edges_from(self.edges)
        return dag

    # ------------------------------------------------------------------ checks
    def check_columns(self, columns) -> None:
        """Every observed node must be a column of the data."""
        present = {str(c) for c in columns}
        for name in self.observed:
            if name not in present:
                raise GraphError(f"has node {name!r}, which is neither a column of the data nor declared latent "
                                 f'(mark a latent node {name} [observed="no"])')

    def adjusted_spec(self, spec):
        """`spec` (a DataSpec) with its covariates derived from the graph when it names none, after
        checking that its covariates and controls are a valid back-door adjustment set for
        treatment -> outcome in this graph. Raises GraphError naming what is wrong."""
        import networkx as nx

        dag = self.dag()
        roles = [("treatment", spec.treatment), ("outcome", spec.outcome)]
        for role, name in roles:
            if name not in dag:
                raise GraphError(f"has no node {name!r}, the {role}")
            if name in self.latent:
                raise GraphError(f"declares the {role} {name!r} latent: it must be a column of the data")
        descendants = nx.descendants(dag, spec.treatment)
        if spec.outcome not in descendants:  # a review: accepted, and the run estimated an effect the graph denies
            raise GraphError(f"has no directed path from the treatment {spec.treatment!r} to the outcome "
                             f"{spec.outcome!r}: it says the treatment has no effect to estimate; add the edges it "
                             "acts through")
        if not spec.covariates:
            taken = {spec.treatment, spec.outcome, *spec.controls, spec.unit_id, spec.group, spec.weight,
                     spec.timestamp, spec.instrument}
            derived = [n for n in self.observed if n not in taken and n not in descendants]
            if not derived:
                raise GraphError(f"has no observed node other than treatment, outcome and controls that is not a "
                                 f"descendant of {spec.treatment!r}: nothing to use as covariates (effect modifiers)")
            # Those of them a valid adjustment set can hold: a collider among them (M-bias) would
            # open a path (a review: it was derived, then refused).
            valid = self.valid_adjustment_set(spec.treatment, spec.outcome, include=[*derived, *spec.controls])
            spec = dataclasses.replace(spec, covariates=[n for n in derived if valid is None or n in valid] or derived)
        adjustment = [*spec.covariates, *spec.controls]
        for role, names in (("covariate", spec.covariates), ("control", spec.controls)):
            for name in names:
                if name in (spec.treatment, spec.outcome):
                    raise GraphError(f"cannot check the {role} {name!r}: it is also the treatment or the outcome")
                if name not in dag:
                    raise GraphError(f"has no node {name!r}, a {role}: every variable the model adjusts for must be "
                                     f"in the graph (a node without edges if it has none)")
                if name in self.latent:
                    raise GraphError(f"declares the {role} {name!r} latent: a latent variable cannot be adjusted for")
                if name in descendants:
                    path = nx.shortest_path(dag, spec.treatment, name)
                    raise GraphError(f"makes the {role} {name!r} a descendant of the treatment ({' -> '.join(path)}): "
                                     f"adjusting for it removes part of the effect or opens a path through a collider "
                                     f"(back-door criterion); drop it{self._suggestion(spec, adjustment)}")
        path = self.open_backdoor_path(spec.treatment, spec.outcome, adjustment)
        if path is not None:
            given = ", ".join(adjustment)
            raise GraphError(f"leaves the back-door path {format_path(dag, path)} open given the covariates and "
                             f"controls ({given}): the effect of {spec.treatment} on {spec.outcome} is confounded "
                             f"along it{self._suggestion(spec, adjustment)}")
        return spec

    def open_backdoor_path(self, treatment: str, outcome: str, adjustment) -> list[str] | None:
        """A back-door path from `treatment` to `outcome` that `adjustment` leaves open (the shortest
        such), or None when `adjustment` d-separates the two in the graph without the treatment's
        outgoing edges (the back-door criterion's second condition)."""
        import networkx as nx

        backdoor, given = self._backdoor_graph(treatment), set(adjustment)
        if nx.is_d_separator(backdoor, {treatment}, {outcome}, given):
            return None
        # A collider on a path is open when it or one of its descendants is adjusted for.
        opens_collider = given | {a for z in given for a in nx.ancestors(backdoor, z)}
        walk = open_walk(backdoor, treatment, outcome, given, opens_collider)
        if walk is not None and len(set(walk)) == len(walk):
            return walk
        # The shortest open walk passes a node twice (rare): the shortest open simple path, among
        # the first few thousand simple paths (trying them all took minutes on 28 nodes, a review).
        skeleton = backdoor.to_undirected(as_view=True)
        for path in itertools.islice(nx.shortest_simple_paths(skeleton, treatment, outcome), MAX_PATHS_TRIED):
            if path_is_open(backdoor, path, given, opens_collider):
                return path
        return walk  # d-connected all the same: the walk shows how

    def valid_adjustment_set(self, treatment: str, outcome: str, include=()) -> list[str] | None:
        """A minimal valid back-door adjustment set among the observed non-descendants of the
        treatment, keeping those of `include` that are allowed; None when the graph has none."""
        import networkx as nx

        backdoor = self._backdoor_graph(treatment)
        allowed = set(self.observed) - nx.descendants(self.dag(), treatment) - {treatment, outcome}

        def separator(kept: list[str]):
            return nx.find_minimal_d_separator(backdoor, {treatment}, {outcome}, included=set(kept),
                                               restricted=allowed)

        # Keep as many of `include` as a valid set can hold, in their order: each joins if a
        # separator can still hold it with those before (a review: one collider among them had
        # dropped them all, and a first mend's backward search dropped a valid one).
        found = separator([])
        if found is None:
            return None
        kept: list[str] = []
        for n in include:
            if n in allowed and (with_n := separator([*kept, n])) is not None:
                kept, found = [*kept, n], with_n
        return [n for n in self.nodes if n in found]

    def implied_independences(self, columns=None) -> tuple[list[Independence], list[tuple[str, str]]]:
        """The conditional independences the graph implies among its observed nodes (those in
        `columns` when given), one for each pair of non-adjacent nodes (dagitty's "missing edge"
        basis): the pair given a minimal set of observed nodes that d-separates it (networkx's
        `find_minimal_d_separator`, restricted to those nodes). Returns the statements, in the
        order the graph names their nodes, and the non-adjacent pairs that no observed set
        separates (connected through a latent node): they imply nothing testable."""
        import networkx as nx

        dag = self.dag()
        present = None if columns is None else {str(c) for c in columns}
        nodes = [n for n in self.observed if present is None or n in present]
        statements, unseparable = [], []
        for a, b in itertools.combinations(nodes, 2):
            if dag.has_edge(a, b) or dag.has_edge(b, a):
                continue
            given = nx.find_minimal_d_separator(dag, {a}, {b}, restricted=set(nodes))
            if given is None:
                unseparable.append((a, b))
            else:
                statements.append(Independence(a, b, tuple(n for n in nodes if n in given)))
        return statements, unseparable

    def _backdoor_graph(self, treatment: str):
        dag = self.dag()
        dag.remove_edges_from(list(dag.out_edges(treatment)))
        return dag

    def _suggestion(self, spec, adjustment) -> str:
        valid = self.valid_adjustment_set(spec.treatment, spec.outcome, include=adjustment)
        if valid is None:
            return ("; no set of observed variables satisfies the back-door criterion in this graph, so the effect "
                    "is not identified by adjustment")
        return f"; a valid adjustment set in this graph: {', '.join(valid) or 'the empty set'}"


@dataclass(frozen=True)
class Independence:
    """`a` is independent of `b` given the nodes `given`: a testable implication of a graph."""

    a: str
    b: str
    given: tuple[str, ...] = ()

    def __str__(self) -> str:  # dagitty's notation
        return f"{self.a} _||_ {self.b}" + (f" | {', '.join(self.given)}" if self.given else "")


# Simple paths tried for an open back-door path when the shortest open walk repeats a node.
MAX_PATHS_TRIED = 5_000


def open_walk(dag, start: str, end: str, given: set, opens_collider: set) -> list[str] | None:
    """The shortest walk from `start` to `end` in `dag` that `given` leaves open (non-colliders
    outside `given`, colliders in `opens_collider`), or None: a breadth-first search over (node,
    arrived along or against an edge), linear in the graph's size (the Bayes-ball reachability
    of Shachter 1998 with back-pointers)."""
    from collections import deque

    came_from = {(start, "up"): None}  # 'up': arrived from a child (against the edge), 'down': from a parent
    queue = deque([(start, "up")])
    while queue:
        node, arrived = queue.popleft()
        if node == end and node != start:
            walk, state = [], (node, arrived)
            while state is not None:
                walk.append(state[0])
                state = came_from[state]
            return walk[::-1]
        passes = node == start or node not in given  # as a non-collider
        steps = []
        if passes:
            steps += [(child, "down") for child in dag.successors(node)]
            if arrived == "up":
                steps += [(parent, "up") for parent in dag.predecessors(node)]
        if arrived == "down" and node != start and node in opens_collider:  # a collider, opened
            steps += [(parent, "up") for parent in dag.predecessors(node)]
        for state in steps:
            if state not in came_from:
                came_from[state] = (node, arrived)
                queue.append(state)
    return None


def path_is_open(dag, path: list[str], given: set, opens_collider: set) -> bool:
    """Whether `path` (a sequence of adjacent nodes of `dag`) is open given `given`: every
    non-collider on it is outside `given`, every collider in `opens_collider` (the adjusted
    variables and their ancestors)."""
    for before, node, after in zip(path, path[1:], path[2:]):
        collider = dag.has_edge(before, node) and dag.has_edge(after, node)
        if (node not in opens_collider) if collider else (node in given):
            return False
    return True


def format_path(dag, path: list[str]) -> str:
    """A path with its edges' directions: 'T <- Z -> Y'."""
    out = [path[0]]
    for a, b in zip(path, path[1:]):
        out += ["->" if dag.has_edge(a, b) else "<-", b]
    return " ".join(out)


# ---------------------------------------------------------------------- the card
def card_section(graph: CausalGraph | None, spec=None) -> dict:
    """The card's `graph` section: the graph as data with its hash and the adjustment set it was
    checked with, or a statement that none was given."""
    if graph is None:
        return {"given": False, "note": NO_GRAPH}
    section = {"given": True, **graph.to_dict()}
    if spec is not None:
        section.update(treatment=spec.treatment, outcome=spec.outcome,
                       adjustment_set=[*spec.covariates, *spec.controls],
                       criterion="back-door: the adjustment set holds no descendant of the treatment and blocks every "
                                 "back-door path from treatment to outcome (checked before training)")
    return section


def assumption(section: dict) -> str | None:
    """The identification assumption a given graph states, as the card's assumptions list words it."""
    if not section.get("given"):
        return None
    return (f"causal graph: the declared graph (sha256 {section['sha256'][:12]}) is true and complete: no common cause "
            f"of treatment and outcome is missing from it; in it the covariates and controls block every back-door "
            f"path from {section.get('treatment', 'the treatment')} to {section.get('outcome', 'the outcome')}")


def diff(old: dict | None, new: dict | None) -> dict:
    """What changed between two cards' `graph` sections (a card without one had no graph)."""
    old, new = old or {"given": False}, new or {"given": False}

    def items(section: dict, key: str) -> set:
        values = section.get(key, []) if section.get("given") else []
        return {" -> ".join(v) if isinstance(v, list | tuple) else v for v in values}

    out: dict[str, Any] = {"changed": old.get("sha256") != new.get("sha256") or old.get("given") != new.get("given"),
                           "given": [bool(old.get("given")), bool(new.get("given"))],
                           "sha256": [old.get("sha256"), new.get("sha256")]}
    for key in ("edges", "nodes", "latent"):
        a, b = items(old, key), items(new, key)
        out[f"{key}_added"], out[f"{key}_removed"] = sorted(b - a), sorted(a - b)
    return out


# ---------------------------------------------------------------------- readers
def _read_dot(text: str) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    import pydot

    printed = io.StringIO()
    # pydot prints a parse error and returns None; and pydot 4.0's grammar calls pyparsing methods
    # that pyparsing 3.3 deprecates, with a warning per call that would reach the user.
    with contextlib.redirect_stdout(printed), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        graphs = pydot.graph_from_dot_data(text)
    if not graphs:
        message = " ".join(printed.getvalue().split()) or "nothing parsed"
        raise GraphError(f"is not valid DOT: {message}")
    if len(graphs) > 1:
        raise GraphError(f"holds {len(graphs)} graphs; give one")
    (dot,) = graphs
    if dot.get_type() != "digraph":
        raise GraphError("is an undirected DOT graph; a causal graph is a digraph (edges written A -> B)")
    if "--" in _without_html_labels(_DOT_NOISE.sub(" ", text)):  # pydot reads A -- B in a digraph as A -> B
        raise GraphError("has an undirected edge (--) in a digraph: write each edge A -> B, and a latent common "
                         'cause as a node of its own (U [observed="no"]; U -> A; U -> B)')
    nodes, edges = [], []

    def endpoints(end, default: bool) -> list[str]:
        """The nodes at one end of an edge, met (and marked) as written there."""
        if isinstance(end, str):  # a name, perhaps with a port (A:p, "a b":p) that says where an arrow is drawn
            name = _unquote(_DOT_ID.match(end).group(0))
            meet(name, default)
            return [name]
        if end.get("edges") or end.get("subgraphs"):  # a subgraph with edges of its own as one end
            raise GraphError("has an edge whose end is a subgraph with edges inside: write the edges one by one")
        # `{U [observed="no"] V} -> Y`, `{node [shape=box] A B} -> Y`: the group's statements, in order,
        # as a subgraph's (a review: its attribute statements became nodes named 'node', its marks were lost).
        names = []
        statements = sorted(((n, st) for n, sts in end.get("nodes", {}).items() for st in sts),
                            key=lambda item: item[1].get("sequence") or 0)
        for raw, statement in statements:
            attributes = statement.get("attributes", {})
            if raw == "node":
                default = is_latent(attributes, default)
            elif raw not in _DOT_KEYWORDS:
                name = _unquote(raw)
                meet(name, default)
                marked[name] = is_latent(attributes, marked[name])
                names.append(name)
        return list(dict.fromkeys(names))

    def is_latent(attributes: dict, default: bool) -> bool:
        value = attributes.get(LATENT_ATTRIBUTE)
        return default if value is None else _unquote(str(value)).lower() in _NO

    marked: dict[str, bool] = {}  # each node's latent mark: its creation's default, then its own attribute

    def meet(name: str, default: bool) -> None:
        nodes.append(name)
        marked.setdefault(name, default)  # defaults apply where a node is first written, as in Graphviz

    def walk(graph, default: bool, edge_dir: str = "forward") -> None:
        # The statements in the file's order (pydot numbers them within each graph and subgraph), so
        # nodes come in the order they are first written; `node [observed="no"]` marks the nodes
        # written after it in its graph or subgraph (a review: it was ignored).
        statements = [*graph.get_nodes(), *graph.get_edges(), *graph.get_subgraphs()]
        for statement in sorted(statements, key=lambda st: st.obj_dict.get("sequence") or 0):
            if isinstance(statement, pydot.Subgraph):
                walk(statement, default, edge_dir)
            elif isinstance(statement, pydot.Edge):
                direction = _unquote(str(statement.get_attributes().get("dir", edge_dir))).lower()
                if direction != "forward":
                    raise GraphError(f"has an edge with dir={direction}: an edge is a cause A -> B; write a latent "
                                     'common cause as a node of its own (U [observed="no"]; U -> A; U -> B)')
                causes = endpoints(statement.get_source(), default)
                effects = endpoints(statement.get_destination(), default)
                edges.extend((cause, effect) for cause in causes for effect in effects)
            elif statement.get_name() == "node":
                default = is_latent(statement.get_attributes(), default)
            elif statement.get_name() == "edge":  # edge [dir=back]: the edges after it, in its scope
                edge_dir = _unquote(str(statement.get_attributes().get("dir", edge_dir))).lower()
            elif statement.get_name() not in _DOT_KEYWORDS:
                name = _unquote(statement.get_name())
                meet(name, default)
                marked[name] = is_latent(statement.get_attributes(), marked[name])

    walk(dot, False)
    return list(dict.fromkeys(nodes)), edges, [n for n, is_marked in marked.items() if is_marked]


def _without_html_labels(text: str) -> str:
    """DOT text (strings and comments gone) without its HTML labels (<...>, nested), which may
    hold '--'; what is left holds no '<' otherwise, DOT having no edge operator with one."""
    while True:
        shorter = re.sub(r"<[^<>]*>", " ", text)
        if shorter == text:
            return text
        text = shorter


def _read_gml(text: str) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    import networkx as nx

    try:
        graph = nx.parse_gml(text, label="label")
    except (nx.NetworkXError, ValueError, KeyError) as exc:
        raise GraphError(f"is not valid GML: {exc}") from None
    if not graph.is_directed():
        raise GraphError("is an undirected GML graph; a causal graph is directed (`directed 1`)")
    latent = [str(n) for n, attrs in graph.nodes(data=True)
              if str(attrs.get(LATENT_ATTRIBUTE, "yes")).lower() in _NO]
    return [str(n) for n in graph.nodes], [(str(a), str(b)) for a, b in graph.edges()], latent


def _unquote(name: str) -> str:
    """A DOT ID as the user means it: "my node" -> my node (escaped quotes unescaped)."""
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return name
