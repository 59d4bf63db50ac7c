//! The run as a PNG: one panel per workload metric, a bar per configuration at its median with a
//! whisker from min to max. Text is drawn with a TrueType font read from the system (Debian's
//! fonts-dejavu-core), so plotters needs no font library.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::markdown::number;
use super::Report;
use crate::configurations::Configuration;
use crate::workloads::{Metric, Workload};
use crate::BenchError;

pub(crate) const FONT: &str = "sans-serif";
const FONT_FILES: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

const WIDTH: u32 = 1400;
const HEADER: u32 = 80;
const PANEL_HEIGHT: u32 = 330;

pub fn draw(r: &Report, path: &Path) -> Result<(), BenchError> {
    register_font()?;
    let configs = r.configuration_names();
    let panels: Vec<(Workload, &str, Metric)> =
        r.workloads.iter().flat_map(|w| w.metrics.iter().map(move |m| (w.name, w.title.as_str(), *m))).collect();
    let cols = if panels.len() > 1 { 2 } else { 1 };
    let rows = panels.len().div_ceil(cols).max(1);
    let height = HEADER + PANEL_HEIGHT * rows as u32;
    let root = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_error)?;
    let (header, body) = root.split_vertically(HEADER);
    let title = if r.method.quick {
        "Sluice datapath benchmark (--quick: a harness check, not a measurement)"
    } else {
        "Sluice datapath benchmark"
    };
    header.draw_text(title, &(FONT, 26).into_font().color(&BLACK), (20, 10)).map_err(chart_error)?;
    let subtitle = format!(
        "{} | {} round(s) x {} s, configurations interleaved | bars: median, whiskers: min-max | client CPU {}, server CPU {}",
        r.machine, r.method.rounds, r.method.seconds_per_run, r.method.client_cpu, r.method.server_cpu
    );
    header.draw_text(&subtitle, &(FONT, 15).into_font().color(&BLACK.mix(0.8)), (20, 48)).map_err(chart_error)?;

    let areas = body.split_evenly((rows, cols));
    for (area, (workload, title, metric)) in areas.iter().zip(&panels) {
        let series: Vec<_> = configs.iter().map(|&c| (c, r.series(*workload, *metric, c))).collect();
        let top = series.iter().filter_map(|(_, s)| s.map(|s| s.max)).fold(0.0_f64, f64::max);
        let top = if top > 0.0 { top * 1.2 } else { 1.0 };
        let better = if metric.higher_is_better() { "higher is better" } else { "lower is better" };
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{title}: {}, {better}", metric.heading()), (FONT, 19))
            .margin(14)
            .x_label_area_size(30)
            .y_label_area_size(80)
            .build_cartesian_2d((0..configs.len().saturating_sub(1)).into_segmented(), 0.0..top)
            .map_err(chart_error)?;
        let names: Vec<&str> = configs.iter().map(|c| c.name()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .y_labels(8)
            .y_desc(metric.unit())
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i).copied().unwrap_or("").to_owned(),
                _ => String::new(),
            })
            .y_label_formatter(&|y| number(*metric, *y))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 15))
            .draw()
            .map_err(chart_error)?;
        for (i, (c, s)) in series.iter().enumerate() {
            let Some(s) = s else { continue };
            let mut bar = Rectangle::new([(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), s.median)], colour(*c).filled());
            bar.set_margin(0, 0, 30, 30);
            chart.draw_series(std::iter::once(bar)).map_err(chart_error)?;
            // Whisker from min to max, with caps.
            let stroke = BLACK.stroke_width(2);
            let whisker = PathElement::new(vec![(SegmentValue::CenterOf(i), s.min), (SegmentValue::CenterOf(i), s.max)], stroke);
            chart.draw_series(std::iter::once(whisker)).map_err(chart_error)?;
            for y in [s.min, s.max] {
                let cap = EmptyElement::at((SegmentValue::CenterOf(i), y)) + PathElement::new(vec![(-9, 0), (9, 0)], stroke);
                chart.draw_series(std::iter::once(cap)).map_err(chart_error)?;
            }
            let style = TextStyle::from((FONT, 15).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
            let label = EmptyElement::at((SegmentValue::CenterOf(i), s.max)) + Text::new(number(*metric, s.median), (0, -6), style);
            chart.draw_series(std::iter::once(label)).map_err(chart_error)?;
        }
    }
    root.present().map_err(chart_error)
}

fn colour(c: Configuration) -> RGBColor {
    match c {
        Configuration::Limit => RGBColor(150, 150, 150),
        Configuration::SluiceBpf => RGBColor(31, 119, 180),
        Configuration::SluiceBpfNoMonitor => RGBColor(90, 160, 90),
        Configuration::SluiceBpfPolicy => RGBColor(40, 110, 170),
        Configuration::SluiceLegacy => RGBColor(140, 190, 230),
        Configuration::Classic => RGBColor(230, 140, 40),
        Configuration::ClassicNft => RGBColor(200, 90, 40),
    }
}

/// Registers the first TrueType font found as "sans-serif", once per process.
pub(crate) fn register_font() -> Result<(), BenchError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let (file, bytes) = FONT_FILES
                .iter()
                .find_map(|f| std::fs::read(f).ok().map(|b| (*f, b)))
                .ok_or_else(|| format!("no TrueType font found (looked for {}): install fonts-dejavu-core", FONT_FILES.join(", ")))?;
            // plotters keeps fonts for the life of the process; this happens once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            for style in [FontStyle::Normal, FontStyle::Bold] {
                plotters::style::register_font(FONT, style, bytes).map_err(|_| format!("{file} is not a usable TrueType font"))?;
            }
            Ok(())
        })
        .clone()
        .map_err(BenchError::Chart)
}

pub(crate) fn chart_error(e: impl std::fmt::Display) -> BenchError {
    BenchError::Chart(e.to_string())
}
