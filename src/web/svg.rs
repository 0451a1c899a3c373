//! The dashboard's pictures, written as SVG text on the server: the grid of intervals × steps,
//! the DAG, a run's Gantt chart and the run-duration chart. Pure: no I/O, no clock.
//!
//! The grid draws one `<path>` per state (each cell a rectangle in it, runs of equal cells merged),
//! so 1,000 intervals × 20 steps is a few dozen DOM nodes, not 20,000. The DAG is laid out once per
//! job definition (Sugiyama's method, `rust-sugiyama`) and cached by the caller; live states are
//! CSS classes on its nodes, never a new layout.

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// Escapes text for SVG/HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The CSS class of a state (`s-success`), or of a cell with no record (`s-none`).
pub fn state_class(state: Option<&str>) -> String {
    format!("s-{}", state.unwrap_or("none"))
}

/// Cell size of the grid, in pixels (a 1 px gap is inside it).
pub const CELL_W: u32 = 10;
pub const CELL_H: u32 = 16;
/// Room for the step names on the left and the time labels on top.
pub const LABEL_W: u32 = 180;
pub const HEADER_H: u32 = 18;

/// The grid: `columns` interval starts (newest first) × `rows` step ids; `state(col, row)` is the
/// step's state for that interval (`None`: no record).
pub fn grid(
    rows: &[String],
    columns: &[DateTime<Utc>],
    tz: Tz,
    state: impl Fn(usize, usize) -> Option<&'static str>,
) -> String {
    let width = LABEL_W + CELL_W * columns.len() as u32 + 2;
    let height = HEADER_H + CELL_H * rows.len() as u32 + 2;
    let mut starts = String::with_capacity(columns.len() * 11);
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            starts.push(' ');
        }
        let _ = write!(starts, "{}", c.timestamp());
    }
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg class=\"grid\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" \
         height=\"{height}\" viewBox=\"0 0 {width} {height}\" data-cw=\"{CELL_W}\" \
         data-ch=\"{CELL_H}\" data-x0=\"{LABEL_W}\" data-y0=\"{HEADER_H}\" \
         data-starts=\"{starts}\" role=\"img\" aria-label=\"{} intervals by {} steps, newest \
         first\">",
        columns.len(),
        rows.len()
    );
    // Row labels.
    out.push_str("<g class=\"rows\">");
    for (r, id) in rows.iter().enumerate() {
        let y = HEADER_H + CELL_H * r as u32 + CELL_H - 4;
        let _ = write!(
            out,
            "<text class=\"row-label\" x=\"{}\" y=\"{y}\">{}</text>",
            LABEL_W - 6,
            esc(id)
        );
    }
    out.push_str("</g>");
    // Column labels: one every `every` columns, where the text fits.
    let every = 12usize;
    out.push_str("<g class=\"cols\">");
    for (c, t) in columns.iter().enumerate().step_by(every) {
        let x = LABEL_W + CELL_W * c as u32;
        let local = t.with_timezone(&tz);
        let _ = write!(
            out,
            "<text x=\"{x}\" y=\"12\">{}</text>",
            local.format("%m-%d %H:%M")
        );
    }
    out.push_str("</g>");
    // One path per state; equal neighbours in a row merged into one rectangle.
    let mut paths = StatePaths::default();
    for r in 0..rows.len() {
        let y = HEADER_H + CELL_H * r as u32;
        let mut c = 0;
        while c < columns.len() {
            let s = state(c, r).unwrap_or("none");
            let mut end = c + 1;
            while end < columns.len() && state(end, r).unwrap_or("none") == s {
                end += 1;
            }
            let x = LABEL_W + CELL_W * c as u32;
            paths.rect(s, x, y, CELL_W * (end - c) as u32 - 1, CELL_H - 1);
            c = end;
        }
    }
    paths.write_to(&mut out);
    out.push_str("<g class=\"live\"></g></svg>");
    out
}

/// The jobs page's strip: one cell per interval (newest on the left), one path per state.
/// `data-starts` and `data-href` let the page's script open the interval clicked.
pub fn strip(states: &[&'static str], starts: &[DateTime<Utc>], href: &str) -> String {
    let (w, h) = (8u32, 14u32);
    let width = w * states.len() as u32;
    let mut paths = StatePaths::default();
    for (i, s) in states.iter().enumerate() {
        paths.rect(s, w * i as u32, 0, w - 1, h);
    }
    let starts: Vec<String> = starts.iter().map(|t| t.timestamp().to_string()).collect();
    let mut out = format!(
        "<svg class=\"strip\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" \
         height=\"{h}\" viewBox=\"0 0 {width} {h}\" data-cw=\"{w}\" data-starts=\"{}\" \
         data-href=\"{}\" role=\"img\" aria-label=\"the last {} intervals, newest first\">",
        starts.join(" "),
        esc(href),
        states.len()
    );
    paths.write_to(&mut out);
    out.push_str("</svg>");
    out
}

/// Rectangles grouped by state: one `<path>` per state (in the order the states first appear),
/// so a picture of thousands of cells is a handful of elements.
#[derive(Default)]
struct StatePaths(Vec<(&'static str, String)>);

impl StatePaths {
    fn rect(&mut self, state: &'static str, x: u32, y: u32, w: u32, h: u32) {
        let i = match self.0.iter().position(|(s, _)| *s == state) {
            Some(i) => i,
            None => {
                self.0.push((state, String::new()));
                self.0.len() - 1
            }
        };
        let _ = write!(self.0[i].1, "M{x} {y}h{w}v{h}h-{w}z");
    }

    fn write_to(self, out: &mut String) {
        for (s, d) in self.0 {
            let _ = write!(out, "<path class=\"s-{s}\" d=\"{d}\"/>");
        }
    }
}

/// A node of a DAG picture.
#[derive(Debug, Clone, PartialEq)]
pub struct DagNode {
    /// `step`, or `job.step` for a step of another job.
    pub id: String,
    /// Another job's step (drawn dashed, linked to its job).
    pub foreign: bool,
}

/// Where each node goes: `(x, y)` of its box's top-left corner, and the picture's size.
#[derive(Debug, Clone, PartialEq)]
pub struct DagLayout {
    pub nodes: Vec<DagNode>,
    pub edges: Vec<(usize, usize)>,
    pub positions: Vec<(f64, f64)>,
    pub width: f64,
    pub height: f64,
}

pub const NODE_W: f64 = 170.0;
pub const NODE_H: f64 = 26.0;
const LAYER_GAP: f64 = 60.0;
const ROW_GAP: f64 = 12.0;

/// Lays out a DAG left to right (upstream on the left): layers by Sugiyama's method, and a
/// longest-path layering if the layout crate cannot (it never should on a checked DAG).
pub fn layout(nodes: Vec<DagNode>, edges: Vec<(usize, usize)>) -> DagLayout {
    let n = nodes.len();
    let coords = std::panic::catch_unwind(|| sugiyama(n, &edges))
        .ok()
        .filter(|c| c.len() == n)
        .unwrap_or_else(|| longest_path(n, &edges));
    let mut width: f64 = 0.0;
    let mut height: f64 = 0.0;
    let positions: Vec<(f64, f64)> = coords
        .iter()
        .map(|&(layer, pos)| {
            let x = 10.0 + layer * (NODE_W + LAYER_GAP);
            let y = 10.0 + pos * (NODE_H + ROW_GAP);
            width = width.max(x + NODE_W + 10.0);
            height = height.max(y + NODE_H + 10.0);
            (x, y)
        })
        .collect();
    DagLayout {
        nodes,
        edges,
        positions,
        width,
        height,
    }
}

/// `(layer, position in layer)` of every node, from `rust-sugiyama` (components stacked).
fn sugiyama(n: usize, edges: &[(usize, usize)]) -> Vec<(f64, f64)> {
    let mut g: petgraph::stable_graph::StableDiGraph<(), ()> =
        petgraph::stable_graph::StableDiGraph::new();
    let ids: Vec<_> = (0..n).map(|_| g.add_node(())).collect();
    for &(a, b) in edges {
        if a < n && b < n && a != b {
            g.add_edge(ids[a], ids[b], ());
        }
    }
    let config = rust_sugiyama::configure::Config {
        vertex_spacing: 10.0,
        ..Default::default()
    };
    let unit = config.vertex_spacing + 1.0;
    let layouts = rust_sugiyama::from_graph(&g, &|_, _| (1.0, 1.0), &config);
    let mut out = vec![(f64::NAN, f64::NAN); n];
    let mut offset = 0.0;
    for (placed, _w, _h) in layouts {
        // Layers are the distinct heights, ordered so that edges point to later layers.
        let mut ys: Vec<f64> = placed.iter().map(|(_, (_, y))| *y).collect();
        ys.sort_by(f64::total_cmp);
        ys.dedup_by(|a, b| (*a - *b).abs() < 1e-6);
        let y_of: std::collections::HashMap<usize, f64> =
            placed.iter().map(|(id, (_, y))| (id.index(), *y)).collect();
        let downward = edges
            .iter()
            .filter_map(|(a, b)| Some((y_of.get(a)?, y_of.get(b)?)))
            .filter(|(a, b)| a < b)
            .count();
        let upward = edges
            .iter()
            .filter_map(|(a, b)| Some((y_of.get(a)?, y_of.get(b)?)))
            .filter(|(a, b)| a > b)
            .count();
        if upward > downward {
            ys.reverse();
        }
        let min_x = placed
            .iter()
            .map(|(_, (x, _))| *x)
            .fold(f64::INFINITY, f64::min);
        let mut max_pos: f64 = 0.0;
        for (id, (x, y)) in placed {
            let layer = ys.iter().position(|v| (*v - y).abs() < 1e-6).unwrap_or(0) as f64;
            let pos = (x - min_x) / unit;
            max_pos = max_pos.max(pos);
            if id.index() < n {
                out[id.index()] = (layer, offset + pos);
            }
        }
        offset += max_pos + 1.0;
    }
    if out.iter().any(|(a, b)| a.is_nan() || b.is_nan()) {
        return Vec::new();
    }
    out
}

/// A plain layering: each node one layer after its deepest upstream, in input order.
fn longest_path(n: usize, edges: &[(usize, usize)]) -> Vec<(f64, f64)> {
    let mut layer = vec![0usize; n];
    // Relax n times (a DAG settles in at most n - 1 passes; a cycle stops there too).
    for _ in 0..n {
        let mut changed = false;
        for &(a, b) in edges {
            if a < n && b < n && layer[b] < layer[a] + 1 && layer[a] + 1 < n {
                layer[b] = layer[a] + 1;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut used: HashMap<usize, usize> = HashMap::new();
    layer
        .iter()
        .map(|&l| {
            let p = used.entry(l).or_insert(0);
            *p += 1;
            (l as f64, (*p - 1) as f64)
        })
        .collect()
}

/// The DAG as SVG; `state(i)` is node `i`'s state for the selected interval, `href(i)` its link.
pub fn dag(
    l: &DagLayout,
    state: impl Fn(usize) -> Option<&'static str>,
    href: impl Fn(usize) -> String,
) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg class=\"dag\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" \
         height=\"{h:.0}\" viewBox=\"0 0 {w:.0} {h:.0}\" role=\"img\" aria-label=\"the job's \
         steps and their dependencies\">",
        w = l.width,
        h = l.height
    );
    out.push_str("<g class=\"edges\">");
    for &(a, b) in &l.edges {
        let (Some(&(ax, ay)), Some(&(bx, by))) = (l.positions.get(a), l.positions.get(b)) else {
            continue;
        };
        let (x1, y1) = (ax + NODE_W, ay + NODE_H / 2.0);
        let (x2, y2) = (bx, by + NODE_H / 2.0);
        let mx = (x1 + x2) / 2.0;
        let _ = write!(
            out,
            "<path d=\"M{x1:.0} {y1:.0}C{mx:.0} {y1:.0} {mx:.0} {y2:.0} {x2:.0} {y2:.0}\"/>"
        );
    }
    out.push_str("</g>");
    for (i, node) in l.nodes.iter().enumerate() {
        let Some(&(x, y)) = l.positions.get(i) else {
            continue;
        };
        let label = if node.id.chars().count() > 24 {
            let cut: String = node.id.chars().take(23).collect();
            format!("{cut}…")
        } else {
            node.id.clone()
        };
        let _ = write!(
            out,
            "<a href=\"{href}\"><g class=\"node {cls}{foreign}\" data-step=\"{id}\">\
             <rect x=\"{x:.0}\" y=\"{y:.0}\" width=\"{NODE_W:.0}\" height=\"{NODE_H:.0}\" rx=\"4\"/>\
             <text x=\"{tx:.0}\" y=\"{ty:.0}\">{label}</text><title>{id}</title></g></a>",
            href = esc(&href(i)),
            cls = state_class(state(i)),
            foreign = if node.foreign { " foreign" } else { "" },
            id = esc(&node.id),
            tx = x + 8.0,
            ty = y + NODE_H / 2.0 + 4.0,
            label = esc(&label),
        );
    }
    out.push_str("</svg>");
    out
}

/// One bar of a Gantt chart: an attempt's wait (ready to started) and its run.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub state: &'static str,
    pub waited_from: Option<DateTime<Utc>>,
    pub started: DateTime<Utc>,
    pub ended: DateTime<Utc>,
}

/// A Gantt chart of attempts, oldest on top.
pub fn gantt(bars: &[Bar]) -> String {
    let row_h = 20.0;
    let left = 200.0;
    let plot_w = 700.0;
    let height = 24.0 + row_h * bars.len() as f64;
    let t0 = bars
        .iter()
        .map(|b| b.waited_from.unwrap_or(b.started).min(b.started))
        .min();
    let t1 = bars.iter().map(|b| b.ended).max();
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg class=\"gantt\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" \
         height=\"{height:.0}\" viewBox=\"0 0 {w:.0} {height:.0}\" role=\"img\" \
         aria-label=\"attempts over time\">",
        w = left + plot_w + 10.0
    );
    let (Some(t0), Some(t1)) = (t0, t1) else {
        out.push_str("</svg>");
        return out;
    };
    let span = ((t1 - t0).num_milliseconds().max(1)) as f64;
    let x = |t: DateTime<Utc>| left + plot_w * ((t - t0).num_milliseconds() as f64 / span);
    let _ = write!(
        out,
        "<text x=\"{left:.0}\" y=\"12\">0 s</text><text x=\"{:.0}\" y=\"12\" \
         text-anchor=\"end\">{}</text>",
        left + plot_w,
        fmt_ms(span as i64)
    );
    for (i, b) in bars.iter().enumerate() {
        let y = 20.0 + row_h * i as f64;
        let _ = write!(
            out,
            "<text class=\"row-label\" x=\"{:.0}\" y=\"{:.0}\">{}</text>",
            left - 6.0,
            y + 13.0,
            esc(&b.label)
        );
        if let Some(w) = b.waited_from.filter(|w| *w < b.started) {
            let _ = write!(
                out,
                "<rect class=\"wait\" x=\"{:.1}\" y=\"{y:.0}\" width=\"{:.1}\" height=\"16\">\
                 <title>waited {}</title></rect>",
                x(w),
                (x(b.started) - x(w)).max(1.0),
                fmt_ms((b.started - w).num_milliseconds())
            );
        }
        let _ = write!(
            out,
            "<rect class=\"s-{}\" x=\"{:.1}\" y=\"{y:.0}\" width=\"{:.1}\" height=\"16\">\
             <title>{} ran {}</title></rect>",
            b.state,
            x(b.started),
            (x(b.ended) - x(b.started)).max(1.0),
            esc(&b.label),
            fmt_ms((b.ended - b.started).num_milliseconds())
        );
    }
    out.push_str("</svg>");
    out
}

/// A value at a time, for the line charts.
pub type Point = (DateTime<Utc>, f64);

/// Run durations (seconds) over time, as a line (oldest on the left).
pub fn durations(points: &[(DateTime<Utc>, f64)]) -> String {
    line(
        points,
        "durations",
        "run durations over time",
        "no finished runs yet",
        |max| fmt_ms((max * 1000.0) as i64),
    )
}

/// Consumer lag (records) over time, as a line.
pub fn lag_line(points: &[(DateTime<Utc>, f64)]) -> String {
    line(
        points,
        "lag",
        "consumer lag over time",
        "no samples yet",
        |max| format!("{max:.0} records"),
    )
}

fn line(
    points: &[(DateTime<Utc>, f64)],
    class: &str,
    label: &str,
    empty: &str,
    fmt_max: impl Fn(f64) -> String,
) -> String {
    let (w, h, pad) = (900.0, 120.0, 30.0);
    let mut out = format!(
        "<svg class=\"{class} line-chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" \
         height=\"{h:.0}\" viewBox=\"0 0 {w:.0} {h:.0}\" role=\"img\" aria-label=\"{label}\">"
    );
    if points.is_empty() {
        let _ = write!(out, "<text x=\"10\" y=\"20\">{empty}</text></svg>");
        return out;
    }
    let max = points.iter().map(|p| p.1).fold(0.0f64, f64::max).max(0.001);
    let n = points.len().max(2) as f64 - 1.0;
    let mut d = String::new();
    for (i, (_, secs)) in points.iter().enumerate() {
        let x = pad + (w - 2.0 * pad) * (i as f64 / n);
        let y = h - pad / 2.0 - (h - pad) * (secs / max);
        let _ = write!(d, "{}{x:.1} {y:.1}", if i == 0 { "M" } else { "L" });
    }
    let _ = write!(
        out,
        "<text x=\"2\" y=\"12\">{}</text><text x=\"2\" y=\"{:.0}\">0</text>\
         <path class=\"line\" d=\"{d}\"/></svg>",
        esc(&fmt_max(max)),
        h - 4.0
    );
    out
}

/// `850 ms`, `12.3 s`, `4 min 2 s`.
pub fn fmt_ms(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(min: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + min * 60, 0).unwrap_or_default()
    }

    #[test]
    fn grid_is_one_path_per_state_with_equal_cells_merged() {
        let rows = vec!["a".to_string(), "<b>".to_string()];
        let cols: Vec<_> = (0..1000).map(|i| t(-i)).collect();
        let svg = grid(&rows, &cols, chrono_tz::UTC, |c, r| match (c, r) {
            (0, _) => Some("running"),
            (_, 0) => Some("success"),
            (c, _) if c % 2 == 0 => Some("failed"),
            _ => None,
        });
        assert_eq!(svg.matches("<path").count(), 4, "{svg:.300}");
        // Row 0: one running cell, then 999 success cells in one rectangle.
        assert!(svg.contains("h9v15h-9z"), "{svg:.300}");
        assert!(svg.contains(&format!("h{}v15h-{}z", 999 * 10 - 1, 999 * 10 - 1)));
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"));
        assert_eq!(svg.matches("<text").count(), 2 + 1000usize.div_ceil(12));
    }

    #[test]
    fn layout_puts_upstream_left_of_downstream() {
        let nodes: Vec<DagNode> = ["extract", "load", "rollup", "report"]
            .iter()
            .map(|s| DagNode {
                id: s.to_string(),
                foreign: false,
            })
            .collect();
        let l = layout(nodes, vec![(0, 1), (1, 2), (1, 3)]);
        let x = |i: usize| l.positions[i].0;
        assert!(
            x(0) < x(1) && x(1) < x(2) && x(1) < x(3),
            "{:?}",
            l.positions
        );
        assert_ne!(l.positions[2], l.positions[3]);
        let svg = dag(&l, |i| (i == 0).then_some("success"), |i| format!("#{i}"));
        assert_eq!(svg.matches("<rect").count(), 4);
        assert!(svg.contains("node s-success"));
    }

    #[test]
    fn layout_of_200_steps_is_quick_and_complete() {
        let nodes: Vec<DagNode> = (0..200)
            .map(|i| DagNode {
                id: format!("step_{i}"),
                foreign: false,
            })
            .collect();
        let edges: Vec<(usize, usize)> = (1..200).map(|i| ((i - 1) / 3, i)).collect();
        let started = std::time::Instant::now();
        let l = layout(nodes, edges.clone());
        assert_eq!(l.positions.len(), 200);
        for (a, b) in edges {
            assert!(l.positions[a].0 < l.positions[b].0);
        }
        // Not a timing assertion on CI: a generous bound that catches a quadratic blow-up.
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn gantt_shows_waits_and_runs() {
        let bars = vec![
            Bar {
                label: "load #1".into(),
                state: "failed",
                waited_from: Some(t(0)),
                started: t(1),
                ended: t(2),
            },
            Bar {
                label: "load #2".into(),
                state: "success",
                waited_from: Some(t(2)),
                started: t(3),
                ended: t(5),
            },
        ];
        let svg = gantt(&bars);
        assert_eq!(svg.matches("class=\"wait\"").count(), 2);
        assert!(svg.contains("s-failed") && svg.contains("s-success"));
        assert!(svg.contains("5 min 0 s"));
    }
}
