//! The run as Markdown: how it was made, medians with min-max per configuration, ratios of
//! medians, the targets, and what each configuration's checks saw.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::Report;
use crate::configurations::Configuration;
use crate::workloads::Metric;

pub fn render(r: &Report) -> String {
    let configs = r.configuration_names();
    let m = &r.method;
    let mut out = String::new();
    let _ = writeln!(out, "Machine: {}\n", r.machine);
    let _ = writeln!(out, "Command: `{}`\n", m.command);
    let _ = writeln!(
        out,
        "{} round{} of {} s per workload, configurations interleaved in each round ({}); client pinned to CPU {}, server to CPU {}. \
         Load average (/proc/loadavg) before: {}; after: {}.\n",
        m.rounds,
        if m.rounds == 1 { "" } else { "s" },
        m.seconds_per_run,
        configs.iter().map(|c| c.name()).collect::<Vec<_>>().join(", "),
        m.client_cpu,
        m.server_cpu,
        m.load_average_before,
        m.load_average_after,
    );

    out.push_str("Medians, with min-max over the rounds in brackets:\n\n");
    let _ = writeln!(out, "| workload | metric | {} |", configs.iter().map(|c| c.name()).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(out, "|---|---|{}", "---|".repeat(configs.len()));
    for w in &r.workloads {
        for &metric in &w.metrics {
            let cells: Vec<String> = configs
                .iter()
                .map(|&c| match r.series(w.name, metric, c) {
                    Some(s) => format!("{} ({}–{})", number(metric, s.median), number(metric, s.min), number(metric, s.max)),
                    None => "–".into(),
                })
                .collect();
            let _ = writeln!(out, "| {} | {} | {} |", w.title, metric.heading(), cells.join(" | "));
        }
    }

    let pairs = ratio_columns(&configs);
    if !pairs.is_empty() {
        out.push_str("\nRatios of medians (for latency, below 1 is faster):\n\n");
        let _ = writeln!(
            out,
            "| workload | metric | {} |",
            pairs.iter().map(|(c, against)| format!("{c} ÷ {against}")).collect::<Vec<_>>().join(" | ")
        );
        let _ = writeln!(out, "|---|---|{}", "---|".repeat(pairs.len()));
        for w in &r.workloads {
            for &metric in &w.metrics {
                let cells: Vec<String> = pairs
                    .iter()
                    .map(|&(c, against)| {
                        let s = r.series(w.name, metric, c);
                        let ratio = s.and_then(|s| if against == Configuration::Limit { s.vs_limit } else { s.vs_classic });
                        ratio.map_or("–".into(), |x| format!("{x:.3}"))
                    })
                    .collect();
                let _ = writeln!(out, "| {} | {} | {} |", w.title, metric.label(), cells.join(" | "));
            }
        }
    }

    out.push_str("\nTargets (sluice-bpf, ratio of medians):\n\n| target | ratio | wanted | met |\n|---|---|---|---|\n");
    for t in &r.targets {
        let ratio = t.ratio.map_or("not measured".into(), |x| format!("{x:.3}"));
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(out, "| {} | {ratio} | ≥ {:.2} | {met} |", t.description, t.minimum_ratio);
    }

    if !r.programming.is_empty() {
        let programmed: Vec<Configuration> =
            configs.iter().copied().filter(|c| r.programming.iter().any(|p| p.configuration == *c)).collect();
        let mut counts: Vec<usize> = r.programming.iter().map(|p| p.services).collect();
        counts.dedup();
        out.push_str("\nService programming time (s), once per count: sluice-bpf from the store update to the agent reporting every frontend, classic the iptables-restore of kube-proxy's rules, classic-nft the nft -f of its nftables ruleset:\n\n");
        let _ = writeln!(out, "| services | {} |", programmed.iter().map(|c| c.name()).collect::<Vec<_>>().join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(programmed.len()));
        for n in counts {
            let cells: Vec<String> = programmed
                .iter()
                .map(|&c| {
                    r.programming
                        .iter()
                        .find(|p| p.configuration == c && p.services == n)
                        .map_or("–".into(), |p| format!("{:.3}", p.seconds))
                })
                .collect();
            let _ = writeln!(out, "| {} | {} |", thousands(n as u64), cells.join(" | "));
        }
    }

    out.push_str("\nChecks after every run (counter movement summed over the runs):\n\n| configuration | claim | runs | counters moved |\n|---|---|---|---|\n");
    for &c in &configs {
        let checks: Vec<_> = r.checks.iter().filter(|k| k.configuration == c).collect();
        let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
        let mut still: BTreeMap<&str, bool> = BTreeMap::new();
        for k in &checks {
            for (name, delta) in &k.evidence.deltas {
                *sums.entry(name).or_default() += delta;
                *still.entry(name).or_insert(true) &= *delta == 0;
            }
        }
        let moved: Vec<String> = sums
            .iter()
            .map(
                |(name, sum)| {
                    if still.get(name).copied().unwrap_or(false) {
                        format!("{name}: 0 in every run")
                    } else {
                        format!("{name}: +{sum}")
                    }
                },
            )
            .collect();
        let _ = writeln!(out, "| {c} | {} | {} | {} |", c.claim(), checks.len(), moved.join("; "));
    }
    out
}

/// (configuration, reference) pairs worth a column: each configuration against `limit` and
/// `classic`, when they ran.
fn ratio_columns(configs: &[Configuration]) -> Vec<(Configuration, Configuration)> {
    let mut pairs = Vec::new();
    for &c in configs {
        for against in [Configuration::Limit, Configuration::Classic] {
            if c != against && configs.contains(&against) && !(c == Configuration::Limit && against == Configuration::Classic) {
                pairs.push((c, against));
            }
        }
    }
    pairs
}

/// A figure with the precision its metric deserves.
pub fn number(metric: Metric, value: f64) -> String {
    match metric {
        Metric::Throughput => format!("{value:.1}"),
        Metric::TransactionsPerSecond => thousands(value.round() as u64),
        Metric::LatencyP50 | Metric::LatencyP99 | Metric::CpuPerGbit => format!("{value:.1}"),
    }
}

pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = digits.as_bytes().rchunks(3).rev().map(|g| std::str::from_utf8(g).unwrap_or("")).collect();
    groups.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_rates_get_thousands_separators() {
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(number(Metric::TransactionsPerSecond, 20396.9), "20,397");
    }

    #[test]
    fn the_table_has_a_row_per_metric_and_the_targets() {
        let md = render(&super::super::tests::sample_report());
        assert!(md.contains("| TCP_STREAM, 1 stream | throughput (Gbit/s) | 50.0 (49.0–51.0) | 48.0 (47.0–49.0) |"), "{md}");
        assert!(md.contains("sluice-bpf ÷ limit"), "{md}");
        assert!(md.contains("| TCP_RR transactions/s at least 1.27x classic | 1.320 | ≥ 1.27 | yes |"), "{md}");
        assert!(md.contains("| 10 | 0.050 | 0.020 |"), "programming time per count and configuration: {md}");
    }

    #[test]
    fn ratio_columns_skip_self_and_absent_references() {
        let pairs = ratio_columns(&[Configuration::Limit, Configuration::SluiceBpf]);
        assert_eq!(pairs, vec![(Configuration::SluiceBpf, Configuration::Limit)]);
    }
}
