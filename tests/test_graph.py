"""The causal graph contract (components/graph.py): reading DOT and GML, the checks a run's roles
must pass (acyclic, columns or latent, back-door criterion) with the path they name, the card's
graph section and its diff."""

import itertools

import networkx as nx
import numpy as np
import pytest

from tauforge.components.data import DataSpec
from tauforge.components.graph import CausalGraph, GraphError, card_section, diff, format_path, path_is_open
from tauforge.components.registry import assumptions, diff_cards

CONFOUNDED = 'digraph { Z -> T; Z -> Y; T -> Y; W -> Y }'


def spec(covariates=(), controls=(), treatment="T", outcome="Y"):
    return DataSpec(outcome=outcome, treatment=treatment, covariates=list(covariates), controls=list(controls))


# ---------------------------------------------------------------------- reading
def test_dot_reads_chains_groups_subgraphs_quoted_names_comments_and_latent_nodes():
    text = """
    // a comment
    strict digraph G {
        rankdir=LR; node [shape=box];
        U [observed="no", label="unobserved"];   /* DoWhy's mark of a latent node */
        "age group" -> T -> Y;
        U -> T; U -> Y;
        {A B} -> Y;
        subgraph cluster_pre { C -> A }
        lonely;
    }"""
    g = CausalGraph.parse(text)
    assert g.format == "dot" and g.latent == ("U",)
    assert g.nodes == ("U", "age group", "T", "Y", "A", "B", "C", "lonely")  # as the file first names them
    assert set(g.edges) == {("age group", "T"), ("T", "Y"), ("U", "T"), ("U", "Y"), ("A", "Y"), ("B", "Y"),
                            ("C", "A")}
    assert g.observed == tuple(n for n in g.nodes if n != "U")


def test_gml_as_dowhy_writes_it_is_the_same_graph_with_the_same_hash():
    gml = """graph [
      directed 1
      node [ id "Z" label "Z" ]  node [ id "T" label "T" ]  node [ id "Y" label "Y" ]
      node [ id "W" label "W" ]  node [ id "U" label "U" observed "no" ]
      edge [ source "Z" target "T" ]  edge [ source "Z" target "Y" ]  edge [ source "T" target "Y" ]
      edge [ source "W" target "Y" ]  edge [ source "U" target "Y" ]
    ]"""
    from_gml = CausalGraph.parse(gml)
    from_dot = CausalGraph.parse('digraph { U [observed="no"]; Z -> T; Z -> Y; T -> Y; W -> Y; U -> Y }')
    assert from_gml.format == "gml" and from_gml.latent == ("U",)
    assert from_gml == CausalGraph(from_gml.nodes, from_dot.edges, ("U",), "gml")
    assert from_gml.sha256 == from_dot.sha256


def test_the_hash_ignores_layout_and_order_but_not_an_edge():
    a = CausalGraph.parse(CONFOUNDED)
    reordered = CausalGraph.parse('digraph {\n  W -> Y\n  T -> Y; Z -> Y  # why\n  Z -> T\n}')
    assert reordered.sha256 == a.sha256 and len(a.sha256) == 64
    assert CausalGraph.parse(a.to_dot()) == a  # the DOT it writes reads back as the same graph
    assert CausalGraph.parse('digraph { Z -> T; Z -> Y; T -> Y; W -> Y; W -> T }').sha256 != a.sha256
    assert CausalGraph.parse('digraph { Z -> T; Z -> Y; T -> Y; W -> Y; W [observed="no"] }').sha256 != a.sha256


@pytest.mark.parametrize("text, message", [
    ("digraph { A -> B -> C -> A; C -> D }", "has a cycle, A -> B -> C -> A: a causal graph must be acyclic"),
    ("digraph { A -> A }", "has a cycle, A -> A"),
    ("graph { A -- B }", "is an undirected DOT graph"),
    ("digraph { A -> }", "is not valid DOT: .*Expected"),
    ("digraph a { A } digraph b { B }", "holds 2 graphs; give one"),
    ("   ", "is empty"),
    ('graph [ directed 0 node [ id 0 label "A" ] ]', "is an undirected GML graph"),
    ('graph [ directed 1 node [ id 0 label "A" ] edge [ source 0 target 7 ] ]', "is not valid GML"),
    # pydot read these as A -> B: a latent confounder drawn as a bidirected edge became a cause.
    ("digraph { A -- B }", r"has an undirected edge \(--\) in a digraph: .* \(U \[observed=\"no\"\]; U -> A"),
    ("digraph { A -> B [dir=both] }", "has an edge with dir=both: an edge is a cause A -> B"),
    ("digraph { A -> B [dir=back] }", "has an edge with dir=back"),
    ("digraph { edge [dir=back]; A -> B }", "has an edge with dir=back"),  # as a default for the edges after it
])
def test_a_graph_that_cannot_be_read_is_refused_saying_why(text, message):
    with pytest.raises(GraphError, match=message) as caught:
        CausalGraph.parse(text)
    assert caught.value.field == "graph"


def test_what_graphviz_and_editors_write_is_read_as_they_mean_it():
    # A review: each of these was refused or misread.
    gml = 'comment "drawn by hand"\ngraph [ directed 1 node [ id 0 label "T" ] node [ id 1 label "Y" ] ' \
          'edge [ source 0 target 1 ] ]'
    assert CausalGraph.parse(gml).format == "gml"  # the tasks get the text alone, without the file's name
    assert CausalGraph.parse("\ufeffdigraph { T -> Y }").edges == (("T", "Y"),)  # a byte-order mark
    defaults = CausalGraph.parse('digraph { subgraph latent { node [observed="no"]; U; V [observed="yes"] } '
                                 'U -> T; T -> Y; U -> Y; V -> Y; W -> Y }')
    assert defaults.latent == ("U",)  # node [...] applies to the nodes written after it in its scope
    assert CausalGraph.parse('digraph { T [label="a -- b"]; T -> Y }  // a -- b').edges == (("T", "Y"),)
    assert CausalGraph.parse("digraph { T [label=<a -- <b>b</b>>]; T -> Y }").edges == (("T", "Y"),)  # HTML
    assert CausalGraph.parse("strict digraph G { graph [rankdir=LR]; T -> Y }").format == "dot"


def test_reading_a_file_takes_gml_by_extension_and_names_a_missing_file(tmp_path):
    (tmp_path / "g.gml").write_text('graph [ directed 1 node [ id 0 label "T" ] node [ id 1 label "Y" ] '
                                    'edge [ source 0 target 1 ] ]')
    assert CausalGraph.read(str(tmp_path / "g.gml")).edges == (("T", "Y"),)
    with pytest.raises(GraphError, match="cannot be read from .*nope.dot"):
        CausalGraph.read(str(tmp_path / "nope.dot"))


def test_every_observed_node_must_be_a_column_and_latent_ones_need_not():
    g = CausalGraph.parse('digraph { U [observed="no"]; U -> T; Z -> T; T -> Y; U -> Y; Z -> Y }')
    g.check_columns(["T", "Y", "Z", "extra"])
    with pytest.raises(GraphError, match="has node 'Z', which is neither a column of the data nor declared latent"):
        g.check_columns(["T", "Y", "U"])


# ---------------------------------------------------------------------- the back-door criterion
def test_a_valid_adjustment_set_passes_unchanged():
    g = CausalGraph.parse(CONFOUNDED)
    for covariates, controls in ((["Z"], []), (["W"], ["Z"]), (["Z", "W"], [])):
        s = spec(covariates, controls)
        assert g.adjusted_spec(s) == s


@pytest.mark.parametrize("text, covariates, path", [
    # an unadjusted confounder
    (CONFOUNDED, ["W"], "T <- Z -> Y"),
    # M-bias: adjusting for the collider M opens the path between its two latent parents
    ('digraph { U1 [observed="no"]; U2 [observed="no"]; U1 -> T; U1 -> M; U2 -> M; U2 -> Y; T -> Y; W -> Y }',
     ["M", "W"], "T <- U1 -> M <- U2 -> Y"),
    # adjusting for a descendant of a collider opens it too
    ('digraph { U1 [observed="no"]; U2 [observed="no"]; U1 -> T; U1 -> M; U2 -> M; U2 -> Y; T -> Y; M -> D }',
     ["D"], "T <- U1 -> M <- U2 -> Y"),
    # the shortest of two open paths is named
    ('digraph { A -> T; A -> B; B -> C; C -> Y; Z -> T; Z -> Y; T -> Y; W -> Y }', ["W"], "T <- Z -> Y"),
])
def test_an_adjustment_set_that_leaves_a_back_door_path_open_is_refused_naming_it(text, covariates, path):
    with pytest.raises(GraphError, match="leaves the back-door path (.*) open") as caught:
        CausalGraph.parse(text).adjusted_spec(spec(covariates))
    assert f"leaves the back-door path {path} open given the covariates and controls ({', '.join(covariates)})" \
        in str(caught.value)


def test_the_refusal_suggests_a_valid_set_or_says_there_is_none():
    with pytest.raises(GraphError, match="a valid adjustment set in this graph: Z, W$"):
        CausalGraph.parse(CONFOUNDED).adjusted_spec(spec(["W"]))
    latent = 'digraph { U [observed="no"]; U -> T; U -> Y; T -> Y; W -> Y }'
    with pytest.raises(GraphError, match="T <- U -> Y open .*no set of observed variables satisfies the back-door "
                                         "criterion in this graph, so the effect is not identified by adjustment"):
        CausalGraph.parse(latent).adjusted_spec(spec(["W"]))


def test_a_descendant_of_the_treatment_in_the_adjustment_set_is_refused_naming_its_path():
    g = CausalGraph.parse('digraph { Z -> T; Z -> Y; T -> M -> Y; M -> N }')
    with pytest.raises(GraphError, match=r"makes the control 'N' a descendant of the treatment \(T -> M -> N\).*"
                                         "a valid adjustment set in this graph: Z$"):
        g.adjusted_spec(spec(["Z"], ["N"]))


@pytest.mark.parametrize("text, s, message", [
    (CONFOUNDED, spec(["Z", "V"]), "has no node 'V', a covariate"),
    (CONFOUNDED, spec(["Z"], treatment="D"), "has no node 'D', the treatment"),
    ('digraph { U [observed="no"]; U -> T; T -> Y }', spec(["U"]), "declares the covariate 'U' latent"),
    ('digraph { Y [observed="no"]; T -> Y }', spec(), "declares the outcome 'Y' latent"),
    (CONFOUNDED, spec(["Z", "T"]), "the covariate 'T': it is also the treatment or the outcome"),
    ('digraph { T -> Y; T -> M }', spec(), "nothing to use as covariates"),
    ('digraph { X -> T; X -> Y }', spec(["X"]), "has no directed path from the treatment 'T' to the outcome 'Y': "
                                                "it says the treatment has no effect to estimate"),
    ('digraph { Y -> T; X -> Y }', spec(["X"]), "has no directed path from the treatment 'T'"),
])
def test_roles_that_do_not_fit_the_graph_are_refused_naming_the_node(text, s, message):
    with pytest.raises(GraphError, match=message):
        CausalGraph.parse(text).adjusted_spec(s)


def test_the_suggested_and_derived_sets_keep_every_given_variable_a_valid_set_can_hold():
    # Two M-bias colliders beside a confounder C and an effect modifier X: the valid set keeps C
    # and X (a review: first all four were dropped, then X with the last collider tried).
    g = CausalGraph.parse('digraph { U1 [observed="no"]; U2 [observed="no"]; U3 [observed="no"]; '
                          'U4 [observed="no"]; C -> T; C -> Y; U1 -> T; U1 -> M1; U2 -> M1; U2 -> Y; U3 -> T; '
                          'U3 -> M2; U4 -> M2; U4 -> Y; X -> Y; T -> Y }')
    assert g.valid_adjustment_set("T", "Y", include=["C", "M1", "M2", "X"]) == ["C", "X"]
    assert g.adjusted_spec(spec()).covariates == ["C", "X"]
    with pytest.raises(GraphError, match=r"open given the covariates and controls \(M1, C, X\).* set in this "
                                         r"graph: C, X$"):
        g.adjusted_spec(spec(["M1", "C", "X"]))


def test_covariates_are_derived_from_the_graph_when_none_are_named():
    g = CausalGraph.parse('digraph { U [observed="no"]; U -> A; A -> T; Z -> T; Z -> Y; T -> M -> Y; W -> Y; '
                          'S -> Y; R -> Y }')
    derived = g.adjusted_spec(DataSpec(outcome="Y", treatment="T", controls=["S"], weight="R"))
    # observed, not the treatment's descendants (M), nor the controls or another role's column
    assert derived.covariates == ["A", "Z", "W"] and derived.controls == ["S"]


def random_dag(rng, n_nodes=7, p_edge=0.35):
    """A DAG on nodes 0..n-1 (edges from lower to higher numbers), named as strings."""
    dag = nx.DiGraph()
    dag.add_nodes_from(str(i) for i in range(n_nodes))
    dag.add_edges_from((str(i), str(j)) for i, j in itertools.combinations(range(n_nodes), 2) if rng.random() < p_edge)
    return dag


def test_the_named_path_agrees_with_networkx_d_separation_on_random_graphs():
    """On 300 seeded random DAGs with random adjustment sets: a path is named exactly when networkx
    finds treatment and outcome d-connected in the back-door graph, and it is a back-door path
    (into the treatment); when networkx finds them d-separated, no path of the skeleton counts as
    open (path_is_open is not too lenient: treating every collider as open fails here). Paths that
    only a collider's adjusted descendant opens are rare in such graphs: the explicit cases above
    cover them."""
    rng = np.random.default_rng(0)
    named = separated = 0
    for _ in range(300):
        dag = random_dag(rng)
        treatment, outcome = "3", "6"
        others = [n for n in dag if n not in (treatment, outcome) and n not in nx.descendants(dag, treatment)]
        adjustment = [n for n in others if rng.random() < 0.4]
        g = CausalGraph(tuple(dag.nodes), tuple(dag.edges))
        backdoor = dag.copy()
        backdoor.remove_edges_from(list(dag.out_edges(treatment)))
        path = g.open_backdoor_path(treatment, outcome, adjustment)
        d_separated = nx.is_d_separator(backdoor, {treatment}, {outcome}, set(adjustment))
        assert (path is None) == d_separated
        if path is None:
            separated += 1
            given = set(adjustment)
            opens = given | {a for z in given for a in nx.ancestors(backdoor, z)}
            for p in nx.all_simple_paths(backdoor.to_undirected(), treatment, outcome):
                assert not path_is_open(backdoor, p, given, opens), p
        else:
            named += 1
            given = set(adjustment)
            opens = given | {a for z in given for a in nx.ancestors(backdoor, z)}
            assert len(set(path)) == len(path) and path_is_open(backdoor, path, given, opens), path
            assert path[0] == treatment and path[-1] == outcome and dag.has_edge(path[1], treatment)
            assert format_path(dag, path).startswith(f"{treatment} <- ")
    assert named > 30 and separated > 30  # both cases were exercised


def test_an_open_path_behind_many_closed_ones_is_named_at_once():
    # A review: 4 x 4 layers of adjusted confounders beside an unadjusted chain of 10 nodes; trying
    # every shorter simple path first ran for minutes before any task started.
    lines = [f"W1_{i} -> T; W4_{i} -> Y" for i in range(4)]
    lines += [f"W{j + 1}_{k} -> W{j}_{i}" for j in range(1, 4) for i in range(4) for k in range(4)]
    lines += ["a0 -> T", *(f"a{i + 1} -> a{i}" for i in range(9)), "a9 -> Y", "T -> Y"]
    g = CausalGraph.parse("digraph { " + "; ".join(lines) + " }")
    covariates = [f"W{j}_{i}" for j in range(1, 5) for i in range(4)]
    chain = "T <- a0 <- a1 <- a2 <- a3 <- a4 <- a5 <- a6 <- a7 <- a8 <- a9 -> Y"
    with pytest.raises(GraphError, match=f"leaves the back-door path {chain} open"):
        g.adjusted_spec(spec(covariates))


# ---------------------------------------------------------------------- the card
def test_the_card_section_holds_the_graph_and_its_hash_or_says_none_was_given():
    g = CausalGraph.parse(CONFOUNDED)
    section = card_section(g, spec(["Z", "W"]))
    assert section["given"] and section["format"] == "dot" and section["sha256"] == g.sha256
    assert section["edges"] == [["Z", "T"], ["Z", "Y"], ["T", "Y"], ["W", "Y"]]
    assert section["adjustment_set"] == ["Z", "W"] and CausalGraph.from_dict(section) == g
    none = card_section(None)
    assert none == {"given": False, "note": "no causal graph was given: the adjustment set rests on the assumptions "
                                            "above alone, unchecked"}
    # The graph's assumption replaces the bare unconfoundedness sentence, naming the graph's hash.
    plain, with_graph = assumptions("observational", none), assumptions("observational", section)
    assert any(a.startswith("unconfoundedness") for a in plain)
    assert not any(a.startswith("unconfoundedness") for a in with_graph)
    assert any(g.sha256[:12] in a for a in with_graph) and len(with_graph) == len(plain)


def test_diff_names_the_edges_nodes_and_latent_nodes_added_and_removed():
    old = card_section(CausalGraph.parse('digraph { Z -> T; Z -> Y; T -> Y; X1 -> T }'))
    new = card_section(CausalGraph.parse('digraph { Z -> T; Z -> Y; T -> Y; U [observed="no"]; U -> Y }'))
    d = diff(old, new)
    assert d["changed"] and d["edges_added"] == ["U -> Y"] and d["edges_removed"] == ["X1 -> T"]
    assert d["nodes_added"] == ["U"] and d["nodes_removed"] == ["X1"] and d["latent_added"] == ["U"]
    assert not diff(old, old)["changed"] and diff(old, old)["edges_added"] == []
    first = diff(None, new)  # a card from before graphs were recorded, or one without a graph
    assert first["changed"] and first["given"] == [False, True] and "U -> Y" in first["edges_added"]


def card(graph_text=None, model_y="auto", fingerprint="a" * 64, warnings=()):
    section = card_section(CausalGraph.parse(graph_text) if graph_text else None, spec(["Z"]))
    return {"model": "m", "version": 1, "graph": section, "assumptions": assumptions("observational", section),
            "data": {"fingerprint": fingerprint, "rows": 100, "source": "d.parquet"},
            "estimator": {"nuisance": {"model_y": model_y, "model_t": "auto", "folds": 2}},
            "evaluation": {"nuisance": {"y_r2": 0.5}, "verdict": {"passed": True, "reasons": [],
                                                                   "warnings": list(warnings)},
                           "refuters": {"placebo": {"p_value": 0.4}}},
            "effect": {"ate": 0.3, "ate_lower": 0.2, "ate_upper": 0.4}}


def test_diff_cards_shows_graph_assumptions_data_learners_and_gate_changes():
    old = card(CONFOUNDED)
    new = card('digraph { Z -> T; Z -> Y; T -> Y }', model_y="sklearn.linear_model.LinearRegression",
               fingerprint="b" * 64, warnings=["balance: |smd| > 0.1 for Z"])
    d = diff_cards(old, new)
    assert d["graph"]["edges_removed"] == ["W -> Y"] and d["graph"]["nodes_removed"] == ["W"]
    assert d["assumptions"]["changed"]  # the graph's hash is in its assumption
    assert d["data"]["changed"] and d["data"]["fingerprint"] == ["a" * 64, "b" * 64]
    assert d["nuisance"]["learners"] == {"model_y": ["auto", "sklearn.linear_model.LinearRegression"]}
    assert d["gate"]["warnings"]["added"] == ["balance: |smd| > 0.1 for Z"] and not d["gate"]["changed"]
    assert d["gate"]["checks"] == {"placebo p-value": [0.4, 0.4]}
    same = diff_cards(old, old)
    assert not any(same[k]["changed"] for k in ("graph", "assumptions", "data", "nuisance", "gate"))
    without = diff_cards(card(None), old)
    assert without["graph"]["given"] == [False, True] and without["assumptions"]["changed"]


# ---------------------------------------------------------------------- a mutation review's cases
def test_observed_no_false_or_0_in_any_case_marks_a_node_latent_in_dot_and_gml():
    for value in ("no", "No", "false", "0"):
        assert CausalGraph.parse(f'digraph {{ U [observed="{value}"]; U -> T; T -> Y }}').latent == ("U",), value
        gml = (f'graph [ directed 1 node [ id 0 label "U" observed "{value}" ] node [ id 1 label "T" ] '
               'edge [ source 0 target 1 ] ]')
        assert CausalGraph.parse(gml).latent == ("U",), value
    assert CausalGraph.parse('digraph { U [observed="yes"]; U -> T }').latent == ()


def test_a_file_named_gml_in_capitals_is_read_as_gml_whatever_its_text_opens_with(tmp_path):
    # A top-level list before `graph [` is GML that the opening's pattern does not recognise: the
    # file's extension decides, whatever its case.
    text = 'info [ drawn "by hand" ]\ngraph [ directed 1 node [ id 0 label "T" ] node [ id 1 label "Y" ] ' \
           'edge [ source 0 target 1 ] ]'
    (tmp_path / "G.GML").write_text(text)
    g = CausalGraph.read(str(tmp_path / "G.GML"))
    assert g.format == "gml" and g.edges == (("T", "Y"),)


def test_the_card_section_of_a_graph_with_latent_nodes_reads_back_as_the_same_graph():
    g = CausalGraph.parse('digraph { U [observed="no"]; U -> T; U -> Y; Z -> T; T -> Y }')
    back = CausalGraph.from_dict(card_section(g, spec(["Z"])))
    assert back == g and back.latent == ("U",) and back.sha256 == g.sha256


def test_the_dot_it_writes_reads_back_with_latent_nodes_and_names_holding_quotes_or_backslashes():
    names = ("U", 'say "hi"', "C:\\dir", "end\\", "age group", "T", "Y")
    g = CausalGraph(names, tuple((n, "T") for n in names[:5]) + (("T", "Y"), ("U", "Y")), ("U",))
    back = CausalGraph.parse(g.to_dot())
    assert back == g and back.latent == ("U",) and back.nodes == names


def test_derived_covariates_leave_out_every_column_with_another_role():
    g = CausalGraph.parse('digraph { Z -> T; Z -> Y; T -> Y; W -> Y; I -> T; id -> Y; grp -> Y; ts -> Y; w -> Y }')
    derived = g.adjusted_spec(DataSpec(outcome="Y", treatment="T", unit_id="id", group="grp", timestamp="ts",
                                       weight="w", instrument="I"))
    assert derived.covariates == ["Z", "W"]


@pytest.mark.parametrize("text, covariates, path", [
    # a shorter path through a collider no one adjusts for is closed: the open one is named
    ('digraph { A -> T; A -> C; B -> C; B -> Y; D -> T; D -> E -> F -> G -> Y; T -> Y; W -> Y }', ["W"],
     "T <- D -> E -> F -> G -> Y"),
    # a collider opened by its adjusted descendant is on the shortest open path, before a longer chain
    ('digraph { U1 [observed="no"]; U2 [observed="no"]; U1 -> T; U1 -> M; U2 -> M; U2 -> Y; M -> D; '
     'A -> T; A -> B -> C -> E -> Y; T -> Y }', ["D"], "T <- U1 -> M <- U2 -> Y"),
])
def test_the_path_named_is_the_shortest_open_one_not_a_closed_shorter_or_an_open_longer_one(text, covariates, path):
    with pytest.raises(GraphError, match="leaves the back-door path") as caught:
        CausalGraph.parse(text).adjusted_spec(spec(covariates))
    assert f"leaves the back-door path {path} open" in str(caught.value)


def test_a_collider_on_a_path_is_open_when_a_descendant_of_it_is_adjusted_for():
    dag = nx.DiGraph([("U1", "T"), ("U1", "M"), ("U2", "M"), ("U2", "Y"), ("M", "D")])
    path = ["T", "U1", "M", "U2", "Y"]
    for given in ({"D"}, {"M"}):
        opens = given | {a for z in given for a in nx.ancestors(dag, z)}
        assert path_is_open(dag, path, given, opens), given
    assert not path_is_open(dag, path, set(), set())
    assert not path_is_open(dag, path, {"D", "U1"}, {"D", "M", "U1", "U2"})  # a non-collider adjusted for


def test_the_card_records_covariates_and_controls_as_the_adjustment_set():
    section = card_section(CausalGraph.parse(CONFOUNDED), spec(["W"], ["Z"]))
    assert section["adjustment_set"] == ["W", "Z"] and section["treatment"] == "T" and section["outcome"] == "Y"


def test_ports_name_no_node_a_restated_node_keeps_its_mark_and_an_edge_end_with_edges_is_refused():
    g = CausalGraph.parse('digraph { U [observed="no"]; U; subgraph s { U }; A:p -> T:n; U -> T; T -> Y:s:w }')
    assert g.nodes == ("U", "A", "T", "Y") and g.latent == ("U",)  # Graphviz keeps a node's attributes
    assert set(g.edges) == {("A", "T"), ("U", "T"), ("T", "Y")}
    with pytest.raises(GraphError, match="has an edge whose end is a subgraph with edges inside"):
        CausalGraph.parse("digraph { {A -> B} -> C }")


@pytest.mark.parametrize("nodes, edges, latent, message", [
    (("T", "Y"), (("T", "Z"),), (), "has an edge T -> Z whose node 'Z' is not among its nodes"),
    (("T", "Y"), (("T", "Y"),), ("U",), "declares 'U' latent but has no such node"),
    ((), (), (), "has no nodes"),
])
def test_a_graph_built_from_data_checks_its_edges_and_latent_nodes_are_among_its_nodes(nodes, edges, latent, message):
    # A card's graph section read back (from_dict) passes through here, edited or not.
    with pytest.raises(GraphError, match=message):
        CausalGraph.from_dict({"nodes": nodes, "edges": edges, "latent": latent})


def test_a_group_of_nodes_at_an_edge_end_is_read_as_a_subgraph_and_a_quoted_name_loses_its_port():
    # A mutation review: Graphviz reads `{...} -> Y` as a subgraph, whose node statements mark
    # nodes and whose `node [...]` sets defaults within it; here `{node [shape=box]; A} -> Y` made a
    # node named 'node', `{U [observed="no"]} -> Y` lost U's mark, and a port after a quoted name
    # stayed part of it.
    g = CausalGraph.parse('digraph { {node [shape=box]; U [observed="no"]; A; B} -> Y; {node [observed="no"]; V} -> T; '
                          'U -> T; V -> Y; "age group":p -> T; T -> Y }')
    assert g.nodes == ("U", "A", "B", "Y", "V", "T", "age group") and g.latent == ("U", "V")
    assert set(g.edges) == {("U", "Y"), ("A", "Y"), ("B", "Y"), ("V", "T"), ("U", "T"), ("V", "Y"),
                            ("age group", "T"), ("T", "Y")}
    g.check_columns(["A", "B", "T", "Y", "age group"])
