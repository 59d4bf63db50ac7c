//! The scale benchmark's figures: per mode and node count, the medians over runs of what a pod
//! costs the control plane; the Markdown table with the per-pod/slices ratios; and the chart
//! (one panel per figure, a line per mode against the node count).

use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use sluice_agent::config::EndpointsMode;

use super::{mode_name, ScaleOptions, ScaleRun};
use crate::report::chart::{chart_error, register_font, FONT};
use crate::{BenchError, Machine, Summary};

/// One run's figures, per pod started where that is how they are compared.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleFigures {
    pub writes_per_pod: f64,
    pub events_per_pod: f64,
    /// What etcd sent, per pod started, KiB.
    pub sent_kib_per_pod: f64,
    pub list_p50_ms: f64,
    pub list_p99_ms: f64,
    pub propagation_p50_ms: f64,
    pub propagation_p99_ms: f64,
    pub propagation_max_ms: f64,
    pub etcd_cpu_seconds: f64,
    pub etcd_peak_rss_mib: f64,
    pub simulator_cpu_seconds: f64,
}

impl ScaleFigures {
    fn of(run: &ScaleRun) -> Self {
        let pods = run.pods_started.max(1) as f64;
        Self {
            writes_per_pod: run.writes as f64 / pods,
            events_per_pod: run.watch_events as f64 / pods,
            sent_kib_per_pod: run.etcd_sent_bytes / 1024.0 / pods,
            list_p50_ms: run.list_ms.p50,
            list_p99_ms: run.list_ms.p99,
            propagation_p50_ms: run.propagation_ms.p50,
            propagation_p99_ms: run.propagation_ms.p99,
            propagation_max_ms: run.propagation_ms.max,
            etcd_cpu_seconds: run.etcd_cpu_seconds,
            etcd_peak_rss_mib: run.etcd_peak_rss_mib,
            simulator_cpu_seconds: run.simulator_cpu_seconds,
        }
    }

    /// Field by field, the median of the runs.
    fn median(runs: &[Self]) -> Self {
        let m = |f: fn(&Self) -> f64| Summary::of(&runs.iter().map(f).collect::<Vec<_>>()).map_or(0.0, |s| s.p50);
        Self {
            writes_per_pod: m(|f| f.writes_per_pod),
            events_per_pod: m(|f| f.events_per_pod),
            sent_kib_per_pod: m(|f| f.sent_kib_per_pod),
            list_p50_ms: m(|f| f.list_p50_ms),
            list_p99_ms: m(|f| f.list_p99_ms),
            propagation_p50_ms: m(|f| f.propagation_p50_ms),
            propagation_p99_ms: m(|f| f.propagation_p99_ms),
            propagation_max_ms: m(|f| f.propagation_max_ms),
            etcd_cpu_seconds: m(|f| f.etcd_cpu_seconds),
            etcd_peak_rss_mib: m(|f| f.etcd_peak_rss_mib),
            simulator_cpu_seconds: m(|f| f.simulator_cpu_seconds),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalePoint {
    pub nodes: usize,
    pub mode: EndpointsMode,
    /// Of the runs that completed; `None` when none did.
    pub median: Option<ScaleFigures>,
    pub runs: Vec<ScaleRun>,
    /// Why the other runs did not complete.
    pub failures: Vec<String>,
}

impl ScalePoint {
    pub fn new(nodes: usize, mode: EndpointsMode, runs: Vec<ScaleRun>, failures: Vec<String>) -> Self {
        let figures: Vec<ScaleFigures> = runs.iter().map(ScaleFigures::of).collect();
        let median = (!figures.is_empty()).then(|| ScaleFigures::median(&figures));
        Self { nodes, mode, median, runs, failures }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleResult {
    pub machine: Machine,
    pub command: String,
    pub quick: bool,
    pub pods_per_node: usize,
    pub groups_per_node: usize,
    pub arrival: super::Arrival,
    pub pod_rate: f64,
    pub churn_percent: usize,
    pub endpoints_per_slice: usize,
    pub debounce_ms: u64,
    pub runs: usize,
    pub points: Vec<ScalePoint>,
}

impl ScaleResult {
    pub fn new(opts: &ScaleOptions, points: Vec<ScalePoint>) -> Self {
        Self {
            machine: Machine::describe(),
            command: opts.command.clone(),
            quick: opts.quick,
            pods_per_node: opts.pods_per_node,
            groups_per_node: opts.groups_per_node,
            arrival: opts.arrival,
            pod_rate: opts.pod_rate,
            churn_percent: opts.churn_percent,
            endpoints_per_slice: opts.endpoints_per_slice,
            debounce_ms: opts.debounce.as_millis() as u64,
            runs: opts.runs,
            points,
        }
    }

    fn point(&self, nodes: usize, mode: EndpointsMode) -> Option<&ScalePoint> {
        self.points.iter().find(|p| p.nodes == nodes && p.mode == mode)
    }

    fn node_counts(&self) -> Vec<usize> {
        let mut n: Vec<usize> = self.points.iter().map(|p| p.nodes).collect();
        n.dedup();
        n
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("Machine: {}\n\nCommand: `{}`\n\n", self.machine, self.command);
        if self.quick {
            out.push_str("**--quick: a harness check at a small N, not a measurement.**\n\n");
        }
        out.push_str(&format!(
            "A fresh etcd per run; {} pods per node in {} workloads (namespace and identity) per node, arriving {}, {} pods/s cluster-wide; then {}% of each node's pods replaced one at a time; then every node drained. Slices of up to {} endpoints, a {} ms debounce in both modes. Medians of {} run(s). Writes, events and bytes are per pod started, over all three phases; LIST after the scale-up; propagation from a pod's start to every node's cache holding its address and identity.\n\n",
            self.pods_per_node,
            self.groups_per_node,
            match self.arrival {
                super::Arrival::NodeBurst => "node by node (each node's pods together)",
                super::Arrival::Spread => "one at a time, round-robin over the nodes",
            },
            self.pod_rate,
            self.churn_percent,
            self.endpoints_per_slice,
            self.debounce_ms,
            self.runs,
        ));
        out.push_str("| nodes | mode | writes/pod | watch events/pod | etcd sent KiB/pod | LIST p50 / p99 ms | propagation p50 / p99 / max ms | etcd CPU s | etcd peak RSS MiB | simulator CPU s |\n");
        out.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let mut notes = Vec::new();
        for p in &self.points {
            for failure in &p.failures {
                notes.push(format!("- {} nodes, {}: a run failed: {failure}", p.nodes, mode_name(p.mode)));
            }
            for why in p.runs.iter().filter_map(|r| r.unsettled.as_ref()) {
                notes.push(format!(
                    "- {} nodes, {}: a run did not settle and ended there; its figures cover the phases until then: {why}",
                    p.nodes,
                    mode_name(p.mode)
                ));
            }
            let revoked: f64 = p.runs.iter().map(|r| r.leases_revoked).sum();
            if revoked > 0.0 {
                notes.push(format!(
                    "- {} nodes, {}: {revoked:.0} node leases expired during the runs (keep-alives too late); those nodes' keys vanished and were written again, which the figures include",
                    p.nodes,
                    mode_name(p.mode)
                ));
            }
            let Some(f) = &p.median else {
                out.push_str(&format!("| {} | {} | no run completed | | | | | | | |\n", p.nodes, mode_name(p.mode)));
                continue;
            };
            out.push_str(&format!(
                "| {} | {} | {:.2} | {:.0} | {:.1} | {:.1} / {:.1} | {:.0} / {:.0} / {:.0} | {:.1} | {:.0} | {:.1} |\n",
                p.nodes,
                mode_name(p.mode),
                f.writes_per_pod,
                f.events_per_pod,
                f.sent_kib_per_pod,
                f.list_p50_ms,
                f.list_p99_ms,
                f.propagation_p50_ms,
                f.propagation_p99_ms,
                f.propagation_max_ms,
                f.etcd_cpu_seconds,
                f.etcd_peak_rss_mib,
                f.simulator_cpu_seconds,
            ));
        }
        let ratios: Vec<String> = self
            .node_counts()
            .into_iter()
            .filter_map(|n| {
                let (s, p) = (self.point(n, EndpointsMode::Slices)?.median?, self.point(n, EndpointsMode::PerPod)?.median?);
                let r = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
                Some(format!(
                    "| {n} | {:.1}x | {:.1}x | {:.1}x | {:.1}x | {:.1}x |\n",
                    r(p.writes_per_pod, s.writes_per_pod),
                    r(p.events_per_pod, s.events_per_pod),
                    r(p.list_p50_ms, s.list_p50_ms),
                    r(p.etcd_cpu_seconds, s.etcd_cpu_seconds),
                    r(p.propagation_p99_ms, s.propagation_p99_ms),
                ))
            })
            .collect();
        if !ratios.is_empty() {
            out.push_str("\nPer-pod over slices (above 1: slices do better):\n\n| nodes | writes | watch events | LIST p50 | etcd CPU | propagation p99 |\n|---:|---:|---:|---:|---:|---:|\n");
            out.extend(ratios);
        }
        if !notes.is_empty() {
            out.push('\n');
            out.push_str(&notes.join("\n"));
            out.push('\n');
        }
        out
    }

    /// Several results as one (node counts measured in separate invocations, say): their
    /// points in node order, the first one's settings and machine, every command quoted; a
    /// later result's point replaces an earlier one's at the same node count and mode. Refused
    /// when they were not measured with the same workload settings.
    pub fn merge(results: Vec<ScaleResult>) -> Result<ScaleResult, BenchError> {
        let mut results = results.into_iter();
        let Some(mut merged) = results.next() else { return Err(BenchError::Invalid("nothing to merge".into())) };
        for r in results {
            let same = (r.pods_per_node, r.groups_per_node, r.arrival, r.churn_percent, r.endpoints_per_slice, r.debounce_ms)
                == (
                    merged.pods_per_node,
                    merged.groups_per_node,
                    merged.arrival,
                    merged.churn_percent,
                    merged.endpoints_per_slice,
                    merged.debounce_ms,
                )
                && r.pod_rate == merged.pod_rate;
            if !same {
                return Err(BenchError::Invalid(format!("`{}` ran another workload than `{}`", r.command, merged.command)));
            }
            merged.command = format!("{}` and `{}", merged.command, r.command);
            merged.runs = merged.runs.min(r.runs);
            merged.quick |= r.quick;
            // A point measured again replaces the earlier one.
            merged.points.retain(|p| !r.points.iter().any(|q| (q.nodes, q.mode) == (p.nodes, p.mode)));
            merged.points.extend(r.points);
        }
        merged.points.sort_by_key(|p| (p.nodes, p.mode != EndpointsMode::Slices));
        Ok(merged)
    }

    pub fn write(&self, dir: &std::path::Path) -> Result<(), BenchError> {
        crate::report::write_results(dir, self, &self.markdown())?;
        self.chart(&dir.join("results.png"))
    }

    /// One panel per figure, a line per mode against the node count.
    fn chart(&self, path: &std::path::Path) -> Result<(), BenchError> {
        register_font()?;
        type Pick = fn(&ScaleFigures) -> f64;
        let panels: [(&str, Pick); 6] = [
            ("watch events per pod", |f| f.events_per_pod),
            ("writes per pod", |f| f.writes_per_pod),
            ("LIST p50, ms", |f| f.list_p50_ms),
            ("propagation p99, ms", |f| f.propagation_p99_ms),
            ("etcd CPU, s", |f| f.etcd_cpu_seconds),
            ("etcd peak RSS, MiB", |f| f.etcd_peak_rss_mib),
        ];
        let root = BitMapBackend::new(path, (1400, 1000)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        let (header, body) = root.split_vertically(70);
        let title = if self.quick { "Sluice control-plane scale (--quick: a harness check)" } else { "Sluice control-plane scale, etcd" };
        header.draw_text(title, &(FONT, 26).into_font().color(&BLACK), (20, 8)).map_err(chart_error)?;
        let subtitle = format!(
            "{} | {} pods/node, {} workloads/node | medians of {} run(s)",
            self.machine, self.pods_per_node, self.groups_per_node, self.runs
        );
        header.draw_text(&subtitle, &(FONT, 15).into_font().color(&BLACK.mix(0.8)), (20, 42)).map_err(chart_error)?;
        let counts = self.node_counts();
        let x_max = *counts.iter().max().unwrap_or(&1) as f64 * 1.05;
        for (area, (title, pick)) in body.split_evenly((3, 2)).iter().zip(panels) {
            let top = self.points.iter().filter_map(|p| p.median.as_ref().map(pick)).fold(0.0_f64, f64::max);
            let top = if top > 0.0 { top * 1.15 } else { 1.0 };
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{title} (lower is better)"), (FONT, 18))
                .margin(12)
                .x_label_area_size(30)
                .y_label_area_size(70)
                .build_cartesian_2d(0.0..x_max, 0.0..top)
                .map_err(chart_error)?;
            chart.configure_mesh().x_desc("nodes").label_style((FONT, 14)).axis_desc_style((FONT, 14)).draw().map_err(chart_error)?;
            for (mode, colour) in [(EndpointsMode::Slices, RGBColor(31, 119, 180)), (EndpointsMode::PerPod, RGBColor(230, 140, 40))] {
                let line: Vec<(f64, f64)> =
                    counts.iter().filter_map(|&n| self.point(n, mode)?.median.as_ref().map(|m| (n as f64, pick(m)))).collect();
                if line.is_empty() {
                    continue;
                }
                chart
                    .draw_series(std::iter::once(PathElement::new(line.clone(), colour.stroke_width(3))))
                    .map_err(chart_error)?
                    .label(mode_name(mode))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3)));
                chart.draw_series(line.iter().map(|&(x, y)| Circle::new((x, y), 4, colour.filled()))).map_err(chart_error)?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font((FONT, 14))
                .draw()
                .map_err(chart_error)?;
        }
        root.present().map_err(chart_error)
    }
}
