//! Line charts drawn server-side as SVG with plotters. Server-side drawing keeps the pages free
//! of JavaScript (the dashboard's Content-Security-Policy forbids scripts outright), needs no
//! vendored chart bundle, and makes each chart part of the HTML a test can read. plotters
//! escapes every text it writes into the SVG.

use std::collections::BTreeMap;

use plotters::prelude::*;

use crate::queries::Point;

const WIDTH: u32 = 560;
const HEIGHT: u32 = 320;

/// Tableau-10, readable on white and distinguishable in print.
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// At most this many series are drawn; the rest are named in the caption as left out.
pub const MAX_SERIES: usize = COLOURS.len();

/// An SVG line chart of `points` (one line per series, in the order of first appearance of
/// each series name), or `None` when there is nothing to draw.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, points: &[Point]) -> Option<String> {
    let mut order: Vec<&str> = Vec::new();
    for p in points.iter().filter(|p| p.x.is_finite() && p.y.is_finite()) {
        if !order.contains(&p.series.as_str()) {
            order.push(&p.series);
        }
    }
    line_chart_keyed(title, x_label, y_label, points, &order)
}

/// An SVG line chart whose series `i` of `series` is drawn in colour `i` whether or not the
/// series before it has points, so that one model keeps its colour on every chart of a page.
/// Points of series not named are left out; `None` when nothing is left to draw.
pub fn line_chart_keyed(
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[Point],
    series: &[&str],
) -> Option<String> {
    let mut by_series: BTreeMap<&str, Vec<&Point>> = BTreeMap::new();
    for p in points.iter().filter(|p| p.x.is_finite() && p.y.is_finite()) {
        if series.contains(&p.series.as_str()) {
            by_series.entry(&p.series).or_default().push(p);
        }
    }
    let present = series.iter().filter(|s| by_series.contains_key(*s)).count();
    let lines: Vec<(RGBColor, &str)> = series
        .iter()
        .take(MAX_SERIES)
        .enumerate()
        .filter(|(_, name)| by_series.contains_key(*name))
        .map(|(i, name)| (COLOURS[i], *name))
        .collect();
    let drawn: Vec<&Point> = lines
        .iter()
        .flat_map(|(_, name)| by_series[name].iter().copied())
        .collect();
    if drawn.is_empty() {
        return None;
    }
    let (x_range, y_range) = ranges(&drawn);
    let integral = drawn.iter().all(|p| p.x.fract() == 0.0);
    let (x_range, x_labels) = whole_ticks(x_range, integral);
    let caption = if present > lines.len() {
        format!("{title} (first {} of {present} series)", lines.len())
    } else {
        title.to_string()
    };

    let mut svg = String::new();
    let result = {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        draw(
            &root, &caption, x_label, y_label, &lines, &by_series, &drawn, x_range, x_labels,
            y_range,
        )
        .and_then(|()| root.present().map_err(|e| e.to_string()))
    };
    match result {
        Ok(()) => Some(svg),
        Err(e) => {
            tracing::warn!("chart {title:?} could not be drawn: {e}");
            None
        }
    }
}

/// The colour of series `i` of [`line_chart_keyed`], as CSS, for a legend outside the chart.
pub fn colour_css(i: usize) -> Option<String> {
    COLOURS
        .get(i)
        .map(|c| format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2))
}

#[allow(clippy::too_many_arguments)]
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    x_label: &str,
    y_label: &str,
    lines: &[(RGBColor, &str)],
    series: &BTreeMap<&str, Vec<&Point>>,
    drawn: &[&Point],
    x_range: std::ops::Range<f64>,
    x_labels: usize,
    y_range: std::ops::Range<f64>,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(36)
        // Room for tick labels as wide as "11000.0" beside the axis title.
        .y_label_area_size(72)
        .build_cartesian_2d(x_range, y_range)
        .map_err(err)?;
    let (x_decimals, y_decimals) = (
        tick_decimals(&chart.x_range(), x_labels),
        tick_decimals(&chart.y_range(), MAX_LABELS),
    );
    let x_tick = move |v: &f64| tick(*v, x_decimals);
    let y_tick = move |v: &f64| tick(*v, y_decimals);
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_labels(x_labels)
        .y_labels(MAX_LABELS)
        .x_label_formatter(&x_tick)
        .y_label_formatter(&y_tick)
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;
    for &(colour, name) in lines {
        let mut points = series[name].clone();
        points.sort_by(|a, b| a.x.total_cmp(&b.x));
        let line: Vec<(f64, f64)> = points.iter().map(|p| (p.x, p.y)).collect();
        chart
            .draw_series(LineSeries::new(
                line.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2)));
        chart
            .draw_series(line.iter().map(|&p| Circle::new(p, 3, colour.filled())))
            .map_err(err)?;
        // The 95% interval of each point that has one.
        chart
            .draw_series(points.iter().filter_map(|p| {
                let (low, high) = interval(p)?;
                Some(ErrorBar::new_vertical(
                    p.x,
                    low,
                    p.y,
                    high,
                    colour.stroke_width(1),
                    6,
                ))
            }))
            .map_err(err)?;
    }
    let corner = legend_corner(drawn, &chart.x_range(), &chart.y_range(), lines.len());
    chart
        .configure_series_labels()
        .position(corner)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// plotters' default and largest number of labels on an axis.
const MAX_LABELS: usize = 10;

/// An x axis of whole numbers (training steps, guidance scales 1 and 2) narrower than ten
/// units, widened to whole ends with one label per whole number, so that a single checkpoint at
/// step 0 reads -1, 0, 1 rather than -0.10 to 0.10 in fifths. Otherwise the range as it is,
/// with plotters' ten labels at most; an axis ten units or wider ticks on whole numbers anyway.
fn whole_ticks(range: std::ops::Range<f64>, integral: bool) -> (std::ops::Range<f64>, usize) {
    let (lo, hi) = (range.start.floor(), range.end.ceil());
    if !integral || hi - lo >= MAX_LABELS as f64 - 1.0 {
        return (range, MAX_LABELS);
    }
    let labels = (hi - lo) as usize + 1;
    (lo..hi, labels)
}

/// How many decimals tell apart the ticks of `range` with at most `labels` labels. plotters
/// steps by 1, 2 or 5 times a power of ten: the smallest such step that spans the range in
/// `labels - 1` gives the power (an IS axis from 1.003250 to 1.003258 steps by 0.000001 and
/// needs six decimals; an FID axis from 900 to 1150 steps by 50 and needs none).
fn tick_decimals(range: &std::ops::Range<f64>, labels: usize) -> usize {
    let least = (range.end - range.start) / labels.saturating_sub(1).max(1) as f64;
    if !(least.is_finite() && least > 0.0) {
        return 1;
    }
    let power = 10f64.powf(least.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&s| s >= least * (1.0 - 1e-9))
        .unwrap_or(10.0 * power);
    (-step.log10().floor()).clamp(0.0, 12.0) as usize
}

/// A tick label with `decimals` decimals, never "-0".
fn tick(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    match text.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
        _ => text,
    }
}

/// The corner of the plot whose legend box (about 30% of the width, a line per series) covers
/// the fewest points and interval ends, so that the legend hides as little as it can; ties go
/// to the upper right, then the upper left, lower right and lower left.
fn legend_corner(
    points: &[&Point],
    x: &std::ops::Range<f64>,
    y: &std::ops::Range<f64>,
    series: usize,
) -> SeriesLabelPosition {
    let (width, height) = (0.3, (0.08 + 0.07 * series as f64).min(0.6));
    let unit = |v: f64, r: &std::ops::Range<f64>| (v - r.start) / (r.end - r.start);
    let corners = [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
    ];
    let covered = |right: bool, upper: bool| {
        points
            .iter()
            .flat_map(|p| {
                let (low, high) = interval(p).unwrap_or((p.y, p.y));
                [(p.x, p.y), (p.x, low), (p.x, high)]
            })
            .filter(|&(px, py)| {
                let (u, v) = (unit(px, x), unit(py, y));
                let across = if right { u >= 1.0 - width } else { u <= width };
                let up = if upper {
                    v >= 1.0 - height
                } else {
                    v <= height
                };
                across && up
            })
            .count()
    };
    corners
        .into_iter()
        .min_by_key(|&(_, right, upper)| covered(right, upper))
        .map_or(SeriesLabelPosition::UpperRight, |(corner, ..)| corner)
}

/// A point's finite interval.
fn interval(p: &Point) -> Option<(f64, f64)> {
    let (low, high) = p.low.zip(p.high)?;
    (low.is_finite() && high.is_finite()).then_some((low, high))
}

/// Axis ranges with a margin, widened when all values are equal so the range is never empty;
/// the y range holds the intervals too.
fn ranges(points: &[&Point]) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let span = |values: &mut dyn Iterator<Item = f64>| {
        let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        let pad = if hi > lo {
            (hi - lo) * 0.05
        } else {
            lo.abs().max(1.0) * 0.1
        };
        (lo - pad)..(hi + pad)
    };
    (
        span(&mut points.iter().map(|p| p.x)),
        span(&mut points.iter().flat_map(|p| {
            let (low, high) = interval(p).unwrap_or((p.y, p.y));
            [p.y, low, high]
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(series: &str, x: f64, y: f64) -> Point {
        Point {
            series: series.into(),
            x,
            y,
            low: None,
            high: None,
        }
    }

    #[test]
    fn tick_labels_have_the_decimals_their_steps_need() {
        assert_eq!(tick_decimals(&(900.0..1150.0), 10), 0);
        assert_eq!(tick_decimals(&(2.5..3.9), 10), 1);
        assert_eq!(tick_decimals(&(1.003_250..1.003_258), 10), 6);
        assert_eq!(tick_decimals(&(35_000.0..56_000.0), 10), 0);
        assert_eq!(tick_decimals(&(-1.0..1.0), 3), 0);
        assert_eq!(tick(1.003_251_4, 6), "1.003251");
        assert_eq!(tick(-0.000_01, 2), "0.00");
        assert_eq!(tick(-1.5, 1), "-1.5");
        // Distinct ticks stay distinct: every multiple of the finest step plotters takes.
        let range = 1.003_250..1.003_258;
        let d = tick_decimals(&range, 10);
        let labels: Vec<String> = (0..9)
            .map(|i| tick(1.003_250 + i as f64 * 1e-6, d))
            .collect();
        let mut unique = labels.clone();
        unique.dedup();
        assert_eq!(unique, labels);
    }

    #[test]
    fn the_legend_goes_where_the_lines_are_not() {
        let corner = |points: &[Point]| {
            let refs: Vec<&Point> = points.iter().collect();
            let (x, y) = ranges(&refs);
            format!("{:?}", legend_corner(&refs, &x, &y, 1))
        };
        // FID falling with training: the upper right is empty.
        let falling = [
            point("a", 0.0, 10.0),
            point("a", 5.0, 5.0),
            point("a", 10.0, 1.0),
        ];
        assert_eq!(corner(&falling), "UpperRight");
        // Rising, as a loss never does but tokens/s might: the upper left.
        let rising = [
            point("a", 0.0, 1.0),
            point("a", 5.0, 5.0),
            point("a", 10.0, 10.0),
        ];
        assert_eq!(corner(&rising), "UpperLeft");
        // A U over the guidance scale with high ends: the lower corners are free.
        let u = [
            point("a", 1.0, 10.0),
            point("a", 2.0, 1.0),
            point("a", 3.0, 10.0),
        ];
        assert_eq!(corner(&u), "LowerRight");
        // An interval end counts like a point: the last point's wide interval reaches the
        // upper right.
        let mut high = point("a", 10.0, 1.0);
        high.low = Some(0.5);
        high.high = Some(12.0);
        let falling_then_wide = [point("a", 0.0, 10.0), point("a", 5.0, 5.0), high];
        assert_eq!(corner(&falling_then_wide), "UpperLeft");
    }

    #[test]
    fn draws_one_path_per_series_and_escapes_text() {
        let points = [
            point("cfg 1.5", 1000.0, 9.0),
            point("cfg 1.5", 2000.0, 6.0),
            point("cfg <b>2</b>", 1000.0, 8.0),
            point("cfg <b>2</b>", 2000.0, 5.0),
        ];
        let svg = line_chart("FID & step", "step", "FID", &points).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        let lines_in = |colour: &str| {
            svg.lines()
                .filter(|l| l.starts_with("<polyline") && l.contains(colour))
                .count()
        };
        // Each series: its line plus its legend swatch; the third colour is unused.
        assert_eq!(lines_in("#1F77B4"), 2, "{svg}");
        assert_eq!(lines_in("#FF7F0E"), 2);
        assert_eq!(lines_in("#2CA02C"), 0);
        assert!(svg.contains("cfg &lt;b&gt;2&lt;/b&gt;"));
        assert!(svg.contains("FID &amp; step"));
        assert!(!svg.contains("<b>"));
    }

    #[test]
    fn a_keyed_series_keeps_its_colour_when_the_one_before_has_no_points() {
        let points = [
            point("second", 1.0, 2.0),
            point("second", 2.0, 1.0),
            point("other", 1.0, 5.0),
        ];
        let svg = line_chart_keyed("loss", "step", "loss", &points, &["first", "second"]).unwrap();
        let lines_in = |colour: &str| {
            svg.lines()
                .filter(|l| l.starts_with("<polyline") && l.contains(colour))
                .count()
        };
        assert_eq!(lines_in("#1F77B4"), 0, "{svg}");
        assert_eq!(lines_in("#FF7F0E"), 2, "the second colour: line and legend");
        assert!(!svg.contains(">other<"), "an unnamed series is left out");
        assert_eq!(colour_css(1).as_deref(), Some("#ff7f0e"));
        assert!(line_chart_keyed("t", "x", "y", &points, &["first"]).is_none());
    }

    #[test]
    fn intervals_are_drawn_as_error_bars_inside_the_axes() {
        let mut with = point("cfg 2", 1000.0, 5.0);
        (with.low, with.high) = (Some(4.0), Some(30.0));
        let without = point("cfg 2", 2000.0, 4.0);
        let svg = line_chart("FID", "step", "FID", &[with, without.clone()]).unwrap();
        let plain = line_chart(
            "FID",
            "step",
            "FID",
            &[point("cfg 2", 1000.0, 5.0), without],
        )
        .unwrap();
        let bars = |svg: &str| {
            svg.lines()
                .filter(|l| l.starts_with("<line") && l.contains("#1F77B4"))
                .count()
        };
        // One error bar: its stem and two caps in the series' colour; the y axis reaches 30.
        assert_eq!((bars(&svg), bars(&plain)), (3, 0), "{svg}");
        assert!(svg.lines().any(|l| l.trim() == "30"), "{svg}");
    }

    #[test]
    fn a_single_checkpoint_has_whole_step_ticks() {
        let labels = |svg: &str| -> Vec<String> {
            svg.lines()
                .map(str::trim)
                .filter(|l| !l.starts_with('<') && !l.is_empty())
                .map(String::from)
                .collect()
        };
        for (step, ticks) in [(0.0, ["-1", "0", "1"]), (5.0, ["4", "5", "6"])] {
            let svg = line_chart("loss", "step", "loss", &[point("a", step, 1000.0)]).unwrap();
            let text = labels(&svg);
            for t in ticks {
                assert!(text.iter().any(|l| l == t), "{t} in {text:?}");
            }
            assert!(
                !text.iter().any(|l| l.contains(".1") || l.contains(".5")),
                "{text:?}"
            );
        }
        // Ten whole units or wider, or fractional: as plotters chooses.
        assert_eq!(whole_ticks(-2.1..44.1, true), (-2.1..44.1, 10));
        assert_eq!(whole_ticks(1.45..1.55, false), (1.45..1.55, 10));
        assert_eq!(whole_ticks(0.95..2.05, true), (0.0..3.0, 4));
    }

    #[test]
    fn nothing_to_draw_is_none_and_a_flat_line_still_draws() {
        assert!(line_chart("t", "x", "y", &[]).is_none());
        assert!(line_chart("t", "x", "y", &[point("a", f64::NAN, 1.0)]).is_none());
        let svg = line_chart("t", "x", "y", &[point("a", 5.0, 2.0)]).unwrap();
        assert!(svg.contains("<circle"));
    }
}
