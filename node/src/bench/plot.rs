//! SVG plots of a sweep, with percentiles rather than averages: throughput
//! and READ/WRITE latency (p50 solid, p99
//! dashed) against clients and against slaves, and the load distribution
//! across slaves. Drawn with plotters' SVG backend only: text is written as
//! SVG `<text>` and its size merely estimated, so no system font (nor
//! fontconfig) is needed to produce the files; the viewer renders the text.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::report::{SlaveLoad, Summary};

/// Size of every plot, in pixels.
const SIZE: (u32, u32) = (1060, 580);
/// Width of the legend panel right of a line chart: a legend inside the
/// plot would hide points (there are up to 10 lines).
const LEGEND_WIDTH: u32 = 200;

/// One line of a [`LineChart`].
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points, in x order.
    pub points: Vec<(f64, f64)>,
    /// Index into the palette: p50 and p99 of one group share a colour.
    pub color: usize,
    /// Dashed (the p99 lines) or solid.
    pub dashed: bool,
}

/// A line chart with one or more series.
#[derive(Clone, Debug)]
pub struct LineChart {
    /// Caption.
    pub title: String,
    /// X axis description, with its unit.
    pub x_label: String,
    /// Y axis description, with its unit.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
    /// Logarithmic y axis (latency: p99 can be many times p50).
    pub log_y: bool,
}

fn drawing_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("cannot draw the plot: {e}")
}

fn color(index: usize) -> RGBColor {
    // Colour-blind-friendly (Okabe-Ito), readable on white.
    const COLORS: [RGBColor; 8] = [
        RGBColor(0, 114, 178),
        RGBColor(213, 94, 0),
        RGBColor(0, 158, 115),
        RGBColor(204, 121, 167),
        RGBColor(86, 180, 233),
        RGBColor(230, 159, 0),
        RGBColor(0, 0, 0),
        RGBColor(240, 228, 66),
    ];
    COLORS[index % COLORS.len()]
}

/// `lo..hi` widened so single values and flat lines still get an axis.
fn padded(lo: f64, hi: f64) -> Range<f64> {
    if hi > lo {
        let pad = (hi - lo) * 0.05;
        (lo - pad)..(hi + pad)
    } else {
        (lo - 1.0)..(hi + 1.0)
    }
}

/// Draws `chart` into an SVG file at `path`.
///
/// # Errors
/// The file cannot be written.
pub fn draw_line_chart(path: &Path, chart: &LineChart) -> anyhow::Result<()> {
    // A log axis cannot show zero (an operation with no sample).
    let series: Vec<Series> = chart
        .series
        .iter()
        .map(|s| Series {
            points: s
                .points
                .iter()
                .copied()
                .filter(|&(x, y)| x.is_finite() && y.is_finite() && (!chart.log_y || y > 0.0))
                .collect(),
            ..s.clone()
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    let all = || series.iter().flat_map(|s| s.points.iter());
    let x_lo = all().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_hi = all().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let y_lo = all().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_hi = all().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let x = if x_lo.is_finite() {
        padded(x_lo, x_hi)
    } else {
        0.0..1.0
    };
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(drawing_error)?;
    let area = root
        .titled(&chart.title, ("sans-serif", 24))
        .map_err(drawing_error)?;
    let (plot, legend) = area.split_horizontally(SIZE.0 - LEGEND_WIDTH);
    draw_legend(&legend, &series)?;
    if chart.log_y {
        let y = if y_lo.is_finite() {
            (y_lo / 1.5)..(y_hi * 1.5)
        } else {
            1.0..10.0
        };
        draw_lines(&plot, chart, &series, x, y.log_scale())?;
    } else {
        let y = if y_hi.is_finite() && y_hi > 0.0 {
            0.0..(y_hi * 1.1)
        } else {
            0.0..1.0
        };
        draw_lines(&plot, chart, &series, x, y)?;
    }
    root.present().map_err(drawing_error)
}

fn draw_lines<DB, Y>(
    root: &DrawingArea<DB, Shift>,
    chart: &LineChart,
    series: &[Series],
    x: Range<f64>,
    y: Y,
) -> anyhow::Result<()>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut ctx = ChartBuilder::on(root)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d::<Range<f64>, Y>(x, y)
        .map_err(drawing_error)?;
    ctx.configure_mesh()
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 13))
        // Clients and slaves are whole numbers: no tick at 2.5 clients.
        .x_label_formatter(&|v: &f64| {
            if (v - v.round()).abs() < 1e-9 {
                format_tick(*v)
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v: &f64| {
            // A log axis gets a grid line at every 1..9 × 10^k; labelling
            // only 1, 2 and 5 keeps the labels apart.
            if chart.log_y {
                format_log_tick(*v)
            } else {
                format_tick(*v)
            }
        })
        .light_line_style(BLACK.mix(0.04))
        // Without asking for many, a log axis spanning less than a decade
        // gets a single label.
        .y_labels(if chart.log_y { 30 } else { 10 })
        .draw()
        .map_err(drawing_error)?;
    for s in series {
        let c = color(s.color);
        let style = c.stroke_width(2);
        if s.dashed {
            ctx.draw_series(DashedLineSeries::new(s.points.clone(), 8, 5, style))
        } else {
            ctx.draw_series(LineSeries::new(s.points.clone(), style))
        }
        .map_err(drawing_error)?;
        ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(drawing_error)?;
    }
    Ok(())
}

/// Draws the legend of `series` in its own panel, one line each.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    series: &[Series],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    for (i, s) in series.iter().enumerate() {
        let y = 40 + 22 * i as i32;
        let style = color(s.color).stroke_width(2);
        // A dashed line's sample is two strokes with a gap.
        let (a, b) = if s.dashed { (10, 16) } else { (13, 13) };
        area.draw(&PathElement::new(vec![(4, y), (4 + a, y)], style))
            .map_err(drawing_error)?;
        area.draw(&PathElement::new(vec![(4 + b, y), (30, y)], style))
            .map_err(drawing_error)?;
        area.draw(&Text::new(
            s.label.clone(),
            (38, y - 7),
            ("sans-serif", 14).into_font().color(&BLACK),
        ))
        .map_err(drawing_error)?;
    }
    Ok(())
}

/// Log-axis ticks: only at 1, 2 and 5 × 10^k.
fn format_log_tick(v: f64) -> String {
    if v <= 0.0 {
        return String::new();
    }
    let mantissa = v / 10f64.powf(v.log10().floor());
    if [1.0, 2.0, 5.0, 10.0]
        .iter()
        .any(|m| (mantissa - m).abs() < 1e-6)
    {
        format_tick(v)
    } else {
        String::new()
    }
}

/// Axis ticks: integers without `.0`, large numbers with a `k`.
fn format_tick(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{}k", (v / 1000.0).round())
    } else if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round())
    } else {
        format!("{v:.1}")
    }
}

/// Draws the requests each slave received as stacked bars (READs below,
/// WRITEs above) into an SVG file at `path`.
///
/// # Errors
/// The file cannot be written.
pub fn draw_load_chart(path: &Path, title: &str, loads: &[SlaveLoad]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(drawing_error)?;
    let n = loads.len().max(1);
    let top = loads
        .iter()
        .map(|l| (l.reads + l.writes) as f64)
        .fold(1.0, f64::max)
        * 1.15;
    let mut ctx = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d::<Range<f64>, RangedCoordf64>(-0.5..(n as f64 - 0.5), (0.0..top).into())
        .map_err(drawing_error)?;
    let ids: Vec<String> = loads.iter().map(|l| l.id.clone()).collect();
    let label = |v: &f64| {
        let i = v.round();
        if (v - i).abs() < 1e-6 && i >= 0.0 {
            ids.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    ctx.configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&label)
        .y_label_formatter(&|v: &f64| format_tick(*v))
        .x_desc("slave")
        .y_desc("requests from the master during the measurement")
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(drawing_error)?;
    let bar = |i: usize, lo: u64, hi: u64| {
        let x = i as f64;
        [(x - 0.35, lo as f64), (x + 0.35, hi as f64)]
    };
    let (read_color, write_color) = (color(0), color(1));
    ctx.draw_series(
        loads
            .iter()
            .enumerate()
            .map(|(i, l)| Rectangle::new(bar(i, 0, l.reads), read_color.filled())),
    )
    .map_err(drawing_error)?
    .label("reads")
    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], read_color.filled()));
    ctx.draw_series(
        loads.iter().enumerate().map(|(i, l)| {
            Rectangle::new(bar(i, l.reads, l.reads + l.writes), write_color.filled())
        }),
    )
    .map_err(drawing_error)?
    .label("writes (one per replica)")
    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], write_color.filled()));
    ctx.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(drawing_error)?;
    root.present().map_err(drawing_error)
}

/// Sorted distinct values of `f` over `points`.
fn distinct<T: Ord + Copy>(points: &[Summary], f: impl Fn(&Summary) -> T) -> Vec<T> {
    let mut values: Vec<T> = points.iter().map(f).collect();
    values.sort_unstable();
    values.dedup();
    values
}

/// Which figure of a point a chart shows.
#[derive(Clone, Copy)]
enum Figure {
    Throughput,
    ReadLatency,
    WriteLatency,
}

/// Reads one parameter (clients or slaves) off a point.
type Param = fn(&Summary) -> u64;

/// The line chart of `figure` with clients (`by_clients`) or slaves along x
/// and one group of lines per value of the other parameter.
fn sweep_chart(points: &[Summary], figure: Figure, by_clients: bool) -> LineChart {
    let (x_of, group_of): (Param, Param) = if by_clients {
        (|p| p.config.clients as u64, |p| u64::from(p.config.slaves))
    } else {
        (|p| u64::from(p.config.slaves), |p| p.config.clients as u64)
    };
    let group_word = |n: u64| match (by_clients, n) {
        (true, 1) => "slave",
        (true, _) => "slaves",
        (false, 1) => "client",
        (false, _) => "clients",
    };
    let x_label = if by_clients {
        "concurrent clients"
    } else {
        "slaves"
    };
    let mut series = Vec::new();
    for (color, group) in distinct(points, group_of).into_iter().enumerate() {
        let mut members: Vec<&Summary> = points.iter().filter(|p| group_of(p) == group).collect();
        members.sort_by_key(|p| x_of(p));
        let line = |f: &dyn Fn(&Summary) -> f64| -> Vec<(f64, f64)> {
            members.iter().map(|p| (x_of(p) as f64, f(p))).collect()
        };
        match figure {
            Figure::Throughput => series.push(Series {
                label: format!("{group} {}", group_word(group)),
                points: line(&|p| p.throughput_ops_per_s),
                color,
                dashed: false,
            }),
            Figure::ReadLatency | Figure::WriteLatency => {
                let op = |p: &Summary| {
                    if matches!(figure, Figure::ReadLatency) {
                        p.read.latency.clone()
                    } else {
                        p.write.latency.clone()
                    }
                };
                series.push(Series {
                    label: format!("p50, {group} {}", group_word(group)),
                    points: line(&|p| op(p).p50_us as f64),
                    color,
                    dashed: false,
                });
                series.push(Series {
                    label: format!("p99, {group} {}", group_word(group)),
                    points: line(&|p| op(p).p99_us as f64),
                    color,
                    dashed: true,
                });
            }
        }
    }
    let what = match figure {
        Figure::Throughput => "Throughput",
        Figure::ReadLatency => "READ latency (p50 solid, p99 dashed)",
        Figure::WriteLatency => "WRITE latency (p50 solid, p99 dashed)",
    };
    LineChart {
        title: format!(
            "{what} vs {}",
            if by_clients { "clients" } else { "slaves" }
        ),
        x_label: x_label.to_string(),
        y_label: match figure {
            Figure::Throughput => "throughput (requests/s)".to_string(),
            _ => "latency (µs, log scale)".to_string(),
        },
        series,
        log_y: !matches!(figure, Figure::Throughput),
    }
}

/// The point whose load distribution is drawn: the most slaves, then the
/// most clients (the busiest cluster of the sweep).
pub fn representative(points: &[Summary]) -> Option<&Summary> {
    points
        .iter()
        .filter(|p| !p.slaves.is_empty())
        .max_by_key(|p| (p.config.slaves, p.config.clients))
}

/// Draws every plot of a sweep into `dir` and returns their paths.
///
/// # Errors
/// A file cannot be written.
pub fn sweep_plots(dir: &Path, points: &[Summary]) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (name, figure) in [
        ("throughput", Figure::Throughput),
        ("read_latency", Figure::ReadLatency),
        ("write_latency", Figure::WriteLatency),
    ] {
        for (axis, by_clients) in [("clients", true), ("slaves", false)] {
            let path = dir.join(format!("{name}_vs_{axis}.svg"));
            draw_line_chart(&path, &sweep_chart(points, figure, by_clients))?;
            written.push(path);
        }
    }
    if let Some(point) = representative(points) {
        let path = dir.join("load_distribution.svg");
        let title = format!(
            "Load across slaves ({} slaves, {} clients, {:.0}% writes)",
            point.config.slaves,
            point.config.clients,
            point.config.workload.write_ratio * 100.0
        );
        draw_load_chart(&path, &title, &point.slaves)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::sample_summary;

    #[test]
    fn a_sweep_draws_every_plot_with_titles_and_legends() {
        let dir = tempfile::tempdir().unwrap();
        let mut points = Vec::new();
        for slaves in [3, 5] {
            for clients in [1, 10, 50] {
                points.push(sample_summary(
                    clients,
                    slaves,
                    1000.0 * clients as f64 / f64::from(slaves),
                ));
            }
        }
        let written = sweep_plots(dir.path(), &points).unwrap();
        assert_eq!(written.len(), 7);
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        for path in &written {
            let svg = std::fs::read_to_string(path).unwrap();
            assert!(svg.starts_with("<svg"), "{}", path.display());
            assert!(svg.contains("<text"), "{}", path.display());
        }
        let throughput = read("throughput_vs_clients.svg");
        for needle in [
            "Throughput vs clients",
            "throughput (requests/s)",
            "concurrent clients",
            "3 slaves",
            "5 slaves",
        ] {
            assert!(throughput.contains(needle), "{needle:?} missing");
        }
        assert!(read("throughput_vs_slaves.svg").contains("50 clients"));
        let latency = read("write_latency_vs_slaves.svg");
        assert!(latency.contains("WRITE latency"));
        assert!(latency.contains("p99, 10 clients"));
        assert!(latency.contains("µs"));
        let load = read("load_distribution.svg");
        assert!(load.contains("Load across slaves (5 slaves, 50 clients"));
        assert!(load.contains("slave-4"));
        assert!(load.contains("reads"));
    }

    #[test]
    fn a_single_point_and_empty_series_still_draw() {
        let dir = tempfile::tempdir().unwrap();
        let mut point = sample_summary(1, 3, 10.0);
        // A read-only run has no WRITE latency: nothing to put on a log axis.
        point.write.latency = Default::default();
        let written = sweep_plots(dir.path(), &[point]).unwrap();
        assert_eq!(written.len(), 7);
        let chart = LineChart {
            title: "empty".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: Vec::new(),
            log_y: true,
        };
        draw_line_chart(&dir.path().join("empty.svg"), &chart).unwrap();
        assert!(sweep_plots(dir.path(), &[]).unwrap().len() == 6);
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(format_tick(5.0), "5");
        assert_eq!(format_tick(2.5), "2.5");
        assert_eq!(format_tick(25_000.0), "25k");
        assert_eq!(format_log_tick(2000.0), "2000");
        assert_eq!(format_log_tick(50_000.0), "50k");
        assert_eq!(format_log_tick(9000.0), "");
    }
}
