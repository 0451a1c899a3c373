//! The project's dependency graph: every step of every job, with cross-job edges (petgraph).
//!
//! Built from a checked [`Project`]: `after:` entries become edges (an unknown name gets the nearest
//! suggestion), a cycle is reported as its whole path (`a.load -> a.rollup -> b.extract -> a.load`), and
//! SQL lineage is compared with the edges: a step that reads a table another step writes, with no path
//! from the writer to it, is a missing dependency (a warning, or an added edge with
//! `infer_dependencies: true`, as SQLMesh does).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use petgraph::algo::{has_path_connecting, tarjan_scc, DfsSpace};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::diag::{did_you_mean, Diagnostic, Diagnostics, Severity};
use crate::project::{Dep, Project};
use crate::steps::TableRef;
use crate::yaml::YamlPath;

/// A node: one step of one job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub job: String,
    pub step: String,
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.job, self.step)
    }
}

/// Why an edge exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    /// `after:` within a job.
    Within,
    /// `after:` naming another job or one of its steps (same logical interval).
    CrossJob,
    /// Added from SQL lineage (`infer_dependencies: true`).
    Inferred,
}

/// The whole project's DAG.
#[derive(Debug, Default)]
pub struct ProjectGraph {
    pub graph: DiGraph<NodeId, EdgeKind>,
    pub index: HashMap<NodeId, NodeIndex>,
}

impl ProjectGraph {
    pub fn node(&self, job: &str, step: &str) -> Option<NodeIndex> {
        self.index
            .get(&NodeId {
                job: job.to_string(),
                step: step.to_string(),
            })
            .copied()
    }

    /// All steps in an order where every step comes after its dependencies, ties broken by job name and
    /// then by the order of the steps in their job file; None if the graph has a cycle.
    pub fn topo_order(&self) -> Option<Vec<NodeIndex>> {
        let mut indegree: HashMap<NodeIndex, usize> = self
            .graph
            .node_indices()
            .map(|n| {
                (
                    n,
                    self.graph
                        .neighbors_directed(n, Direction::Incoming)
                        .count(),
                )
            })
            .collect();
        let key = |n: NodeIndex| (self.graph[n].job.clone(), n.index());
        let mut ready: std::collections::BTreeSet<((String, usize), NodeIndex)> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(n, _)| (key(*n), *n))
            .collect();
        let mut out = Vec::with_capacity(self.graph.node_count());
        while let Some(first) = ready.iter().next().cloned() {
            ready.remove(&first);
            let n = first.1;
            out.push(n);
            for m in self.graph.neighbors_directed(n, Direction::Outgoing) {
                if let Some(d) = indegree.get_mut(&m) {
                    *d -= 1;
                    if *d == 0 {
                        ready.insert((key(m), m));
                    }
                }
            }
        }
        (out.len() == self.graph.node_count()).then_some(out)
    }

    /// Direct upstream steps of `n`, with the edge kind.
    pub fn upstream(&self, n: NodeIndex) -> Vec<(NodeIndex, EdgeKind)> {
        let mut v: Vec<_> = self
            .graph
            .edges_directed(n, Direction::Incoming)
            .map(|e| (e.source(), *e.weight()))
            .collect();
        v.sort_by(|a, b| self.graph[a.0].cmp(&self.graph[b.0]));
        v
    }

    /// Steps of one job in dependency order.
    pub fn job_steps(&self, job: &str) -> Vec<NodeIndex> {
        self.topo_order()
            .unwrap_or_else(|| self.graph.node_indices().collect())
            .into_iter()
            .filter(|n| self.graph[*n].job == job)
            .collect()
    }
}

/// Build the graph and report unknown dependencies, cycles and missing (lineage) dependencies.
pub fn build(project: &Project, diags: &mut Diagnostics) -> ProjectGraph {
    let mut g = ProjectGraph::default();
    for job in &project.jobs {
        for s in &job.steps {
            let id = NodeId {
                job: job.name.clone(),
                step: s.id.clone(),
            };
            let n = g.graph.add_node(id.clone());
            g.index.insert(id, n);
        }
    }
    // Edge provenance: (from, to) → the `after` entry that made it, for positions.
    let mut origin: HashMap<(NodeIndex, NodeIndex), YamlPath> = HashMap::new();
    let job_names: Vec<&str> = project.jobs.iter().map(|j| j.name.as_str()).collect();

    for job in &project.jobs {
        let step_ids: Vec<&str> = job.steps.iter().map(|s| s.id.as_str()).collect();
        for s in &job.steps {
            let Some(to) = g.node(&job.name, &s.id) else {
                continue;
            };
            for (i, dep) in s.after.iter().enumerate() {
                let at = s.path.key("after").index(i);
                let err = |msg: String| job.source.error_at_value(&at, "unknown-dependency", msg);
                let mut from: Vec<(NodeIndex, EdgeKind)> = Vec::new();
                match dep {
                    Dep::Name(n) if n == &s.id => {
                        diags.push(job.source.error_at_value(
                            &at,
                            "cycle",
                            format!("step '{}.{}' depends on itself", job.name, s.id),
                        ));
                    }
                    Dep::Name(n) => {
                        if let Some(f) = g.node(&job.name, n) {
                            from.push((f, EdgeKind::Within));
                        } else if let Some(other) = project.job(n) {
                            from.extend(
                                sinks(other)
                                    .into_iter()
                                    .filter_map(|st| g.node(n, st))
                                    .map(|f| (f, EdgeKind::CrossJob)),
                            );
                        } else {
                            let cands = step_ids
                                .iter()
                                .copied()
                                .chain(job_names.iter().copied().filter(|j| *j != job.name));
                            diags.push(err(format!(
                                "step '{}.{}': unknown dependency '{n}'{}",
                                job.name,
                                s.id,
                                did_you_mean(n, cands)
                            )).help("`after` takes a step of this job, `job.step`, or `job` (every step of another job)"));
                        }
                    }
                    Dep::JobStep(j, st) => match project.job(j) {
                        Some(other) => match g.node(j, st) {
                            Some(f) => from.push((
                                f,
                                if *j == job.name {
                                    EdgeKind::Within
                                } else {
                                    EdgeKind::CrossJob
                                },
                            )),
                            None => {
                                let cands = other.steps.iter().map(|x| x.id.as_str());
                                diags.push(err(format!(
                                    "step '{}.{}': job '{j}' has no step '{st}'{}",
                                    job.name,
                                    s.id,
                                    did_you_mean(st, cands)
                                        .replace("did you mean '", &format!("did you mean '{j}."))
                                )));
                            }
                        },
                        None => diags.push(err(format!(
                            "step '{}.{}': unknown job '{j}' in dependency '{j}.{st}'{}",
                            job.name,
                            s.id,
                            did_you_mean(j, job_names.iter().copied())
                        ))),
                    },
                }
                for (f, kind) in from {
                    if f == to {
                        diags.push(job.source.error_at_value(
                            &at,
                            "cycle",
                            format!("step '{}.{}' depends on itself", job.name, s.id),
                        ));
                        continue;
                    }
                    if !g.graph.contains_edge(f, to) {
                        g.graph.add_edge(f, to, kind);
                        origin.insert((f, to), at.clone());
                    }
                }
            }
        }
    }

    let lineage = lineage_pairs(project, &g);
    if project.infer_dependencies {
        for (writer, reader, _) in &lineage {
            if !g.graph.contains_edge(*writer, *reader) && !reaches(&g, *writer, *reader) {
                g.graph.add_edge(*writer, *reader, EdgeKind::Inferred);
            }
        }
    }

    let had_cycle = report_cycles(project, &g, &origin, diags);
    if !project.infer_dependencies && !had_cycle {
        let mut space = DfsSpace::new(&g.graph);
        for (writer, reader, table) in lineage {
            if has_path_connecting(&g.graph, writer, reader, Some(&mut space)) {
                continue;
            }
            let w = &g.graph[writer];
            let r = &g.graph[reader];
            let Some(job) = project.job(&r.job) else {
                continue;
            };
            let Some(spec) = job.step(&r.step) else {
                continue;
            };
            let dep = if w.job == r.job {
                w.step.clone()
            } else {
                w.to_string()
            };
            let mut d = job
                .source
                .error_at_value(
                    &spec.path.key("id"),
                    "missing-dependency",
                    format!(
                        "step '{r}' reads {} (on '{}'), which step '{w}' writes, but does not depend on it",
                        table.table, table.connection
                    ),
                )
                .help(format!("add `after: [{dep}]` to step '{}', or set `infer_dependencies: true` in cranium.yaml", r.step));
            d.severity = Severity::Warning;
            diags.push(d);
        }
    }
    g
}

fn reaches(g: &ProjectGraph, from: NodeIndex, to: NodeIndex) -> bool {
    has_path_connecting(&g.graph, from, to, None)
}

/// Steps of a job that no other step of the job waits for.
fn sinks(job: &crate::project::Job) -> Vec<&str> {
    job.steps
        .iter()
        .filter(|s| {
            !job.steps.iter().any(|o| {
                o.after.iter().any(|d| match d {
                    Dep::Name(n) => n == &s.id,
                    Dep::JobStep(j, st) => j == &job.name && st == &s.id,
                })
            })
        })
        .map(|s| s.id.as_str())
        .collect()
}

/// (writer, reader, table) for every table a step reads that another step writes.
fn lineage_pairs(project: &Project, g: &ProjectGraph) -> Vec<(NodeIndex, NodeIndex, TableRef)> {
    let mut writers: BTreeMap<&TableRef, Vec<NodeIndex>> = BTreeMap::new();
    for job in &project.jobs {
        for s in &job.steps {
            if let Some(n) = g.node(&job.name, &s.id) {
                for t in &s.lineage.writes {
                    writers.entry(t).or_default().push(n);
                }
            }
        }
    }
    let mut out = Vec::new();
    for job in &project.jobs {
        for s in &job.steps {
            let Some(reader) = g.node(&job.name, &s.id) else {
                continue;
            };
            for t in &s.lineage.reads {
                for &w in writers.get(t).map(|v| v.as_slice()).unwrap_or_default() {
                    if w != reader {
                        out.push((w, reader, t.clone()));
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| (&g.graph[a.1], &g.graph[a.0]).cmp(&(&g.graph[b.1], &g.graph[b.0])));
    out.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    out
}

/// Report each cycle once, as a path. Returns whether there was one.
fn report_cycles(
    project: &Project,
    g: &ProjectGraph,
    origin: &HashMap<(NodeIndex, NodeIndex), YamlPath>,
    diags: &mut Diagnostics,
) -> bool {
    let mut found = false;
    for scc in tarjan_scc(&g.graph) {
        if scc.len() < 2 {
            continue;
        }
        found = true;
        let mut members = scc.clone();
        members.sort_by(|a, b| g.graph[*a].cmp(&g.graph[*b]));
        let start = members[0];
        let path = cycle_path(g, start, &members);
        let text: Vec<String> = path.iter().map(|n| g.graph[*n].to_string()).collect();
        // Point at the `after` entry that closes the cycle back to the start.
        let last = path[path.len() - 2];
        let target = &g.graph[start];
        let place = origin
            .get(&(last, start))
            .and_then(|p| project.job(&target.job).map(|j| (j, p)));
        let msg = format!("dependency cycle: {}", text.join(" -> "));
        let d = match place {
            Some((job, p)) => job.source.error_at_value(p, "cycle", msg),
            None => Diagnostic::error("cycle", msg),
        }
        .help("remove one of these `after` entries (or the SQL read that was inferred as one)");
        diags.push(d);
    }
    found
}

/// A cycle through `start` inside its strongly connected component, as nodes with `start` at both ends.
fn cycle_path(g: &ProjectGraph, start: NodeIndex, members: &[NodeIndex]) -> Vec<NodeIndex> {
    // Breadth-first from start's successors back to start, staying inside the component: the shortest cycle.
    let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = std::collections::VecDeque::new();
    let mut succ: Vec<NodeIndex> = g
        .graph
        .neighbors_directed(start, Direction::Outgoing)
        .filter(|n| members.contains(n))
        .collect();
    succ.sort_by(|a, b| g.graph[*a].cmp(&g.graph[*b]));
    for n in succ {
        if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(n) {
            e.insert(start);
            queue.push_back(n);
        }
    }
    while let Some(n) = queue.pop_front() {
        if n == start {
            break;
        }
        let mut next: Vec<NodeIndex> = g
            .graph
            .neighbors_directed(n, Direction::Outgoing)
            .filter(|m| members.contains(m))
            .collect();
        next.sort_by(|a, b| g.graph[*a].cmp(&g.graph[*b]));
        for m in next {
            if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(m) {
                e.insert(n);
                queue.push_back(m);
            }
        }
    }
    let mut path = vec![start];
    let mut cur = start;
    while let Some(&p) = prev.get(&cur) {
        path.push(p);
        if p == start || path.len() > members.len() + 1 {
            break;
        }
        cur = p;
    }
    path.reverse();
    path
}

/// Output formats of `cranium graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    Text,
    Dot,
    Mermaid,
}

/// Render the graph (or one job with its cross-job neighbours).
pub fn render(g: &ProjectGraph, job: Option<&str>, format: GraphFormat) -> String {
    let order = g
        .topo_order()
        .unwrap_or_else(|| g.graph.node_indices().collect());
    let include = |n: NodeIndex| -> bool {
        match job {
            None => true,
            Some(j) => {
                g.graph[n].job == j || g.graph.neighbors_undirected(n).any(|m| g.graph[m].job == j)
            }
        }
    };
    let nodes: Vec<NodeIndex> = order.into_iter().filter(|n| include(*n)).collect();
    let edges: Vec<(NodeIndex, NodeIndex, EdgeKind)> = g
        .graph
        .edge_references()
        .filter(|e| nodes.contains(&e.source()) && nodes.contains(&e.target()))
        .filter(|e| {
            job.is_none_or(|j| g.graph[e.source()].job == j || g.graph[e.target()].job == j)
        })
        .map(|e| (e.source(), e.target(), *e.weight()))
        .collect();
    let mut jobs: Vec<&str> = Vec::new();
    for n in &nodes {
        let j = g.graph[*n].job.as_str();
        if !jobs.contains(&j) {
            jobs.push(j);
        }
    }
    jobs.sort();
    let mut out = String::new();
    match format {
        GraphFormat::Text => {
            for j in &jobs {
                let _ = writeln!(out, "{j}");
                for n in nodes.iter().filter(|n| g.graph[**n].job == *j) {
                    let ups: Vec<String> = edges
                        .iter()
                        .filter(|e| e.1 == *n)
                        .map(|e| {
                            let u = &g.graph[e.0];
                            match e.2 {
                                EdgeKind::Within => u.step.clone(),
                                EdgeKind::CrossJob => u.to_string(),
                                EdgeKind::Inferred => format!("{u} (inferred)"),
                            }
                        })
                        .collect();
                    if ups.is_empty() {
                        let _ = writeln!(out, "  {}", g.graph[*n].step);
                    } else {
                        let _ = writeln!(out, "  {} <- {}", g.graph[*n].step, ups.join(", "));
                    }
                }
            }
        }
        GraphFormat::Dot => {
            out.push_str("digraph cranium {\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"Helvetica\"];\n");
            for (i, j) in jobs.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "  subgraph cluster_{i} {{\n    label={};",
                    dot_quote(j)
                );
                for n in nodes.iter().filter(|n| g.graph[**n].job == *j) {
                    let _ = writeln!(
                        out,
                        "    {} [label={}];",
                        dot_quote(&g.graph[*n].to_string()),
                        dot_quote(&g.graph[*n].step)
                    );
                }
                out.push_str("  }\n");
            }
            for (a, b, k) in &edges {
                let style = match k {
                    EdgeKind::Within => "",
                    EdgeKind::CrossJob => " [style=dashed]",
                    EdgeKind::Inferred => " [style=dotted, label=\"inferred\"]",
                };
                let _ = writeln!(
                    out,
                    "  {} -> {}{style};",
                    dot_quote(&g.graph[*a].to_string()),
                    dot_quote(&g.graph[*b].to_string())
                );
            }
            out.push_str("}\n");
        }
        GraphFormat::Mermaid => {
            out.push_str("flowchart LR\n");
            let id = |n: NodeIndex| mermaid_id(&g.graph[n].to_string());
            for j in &jobs {
                let _ = writeln!(out, "  subgraph {}[\"{}\"]", mermaid_id(j), j);
                for n in nodes.iter().filter(|n| g.graph[**n].job == *j) {
                    let _ = writeln!(out, "    {}[\"{}\"]", id(*n), g.graph[*n].step);
                }
                out.push_str("  end\n");
            }
            for (a, b, k) in &edges {
                let arrow = match k {
                    EdgeKind::Within => "-->",
                    EdgeKind::CrossJob => "-.->",
                    EdgeKind::Inferred => "-. inferred .->",
                };
                let _ = writeln!(out, "  {} {arrow} {}", id(*a), id(*b));
            }
        }
    }
    out
}

fn dot_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn mermaid_id(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
