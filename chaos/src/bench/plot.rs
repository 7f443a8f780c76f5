//! SVG plots of latency distributions for `BENCHMARKS.md`: one cumulative distribution
//! curve per series on a logarithmic latency axis, drawn as plain SVG (no dependency;
//! any browser or markdown viewer renders it).

use std::fmt::Write as _;
use std::time::Duration;

/// Width and height of the plot, in SVG units.
const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 440.0;
/// Margins around the plotting area: left, right, top, bottom.
const MARGIN: (f64, f64, f64, f64) = (64.0, 190.0, 40.0, 48.0);
/// Colours of successive series groups (colour-blind safe, Okabe–Ito).
const COLOURS: [&str; 7] =
    ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000"];
/// Points per curve at most (evenly spaced in rank).
const POINTS: usize = 400;
/// Decades of the tail the y axis shows: up to p99.9.
const TAIL_DECADES: f64 = 3.0;

/// One curve.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Latencies of the series, any order.
    pub latencies: Vec<Duration>,
    /// Index into the palette; series with the same colour belong together.
    pub colour: usize,
    /// Drawn dashed (the comparison system).
    pub dashed: bool,
}

/// The SVG of the cumulative latency distributions of `series` (x: latency, log scale;
/// y: percentile on a tail scale up to p99.9), titled `title`. Empty series are left
/// out; with none left the plot says so.
#[must_use]
pub fn latency_cdf_svg(title: &str, series: &[Series]) -> String {
    let series: Vec<(&Series, Vec<f64>)> = series
        .iter()
        .filter(|s| !s.latencies.is_empty())
        .map(|s| {
            let mut ms: Vec<f64> = s.latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect();
            ms.sort_by(f64::total_cmp);
            (s, ms)
        })
        .collect();
    let (left, right, top, bottom) = MARGIN;
    let (plot_w, plot_h) = (WIDTH - left - right, HEIGHT - top - bottom);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        left + plot_w / 2.0,
        escape(title)
    );
    if series.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">no latencies were recorded</text></svg>"#,
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
        return out;
    }
    // Decades covering every latency.
    let min = series.iter().map(|(_, ms)| ms[0]).fold(f64::INFINITY, f64::min).max(1e-3);
    let max = series.iter().map(|(_, ms)| ms[ms.len() - 1]).fold(0.0, f64::max).max(min * 10.0);
    let (lo, hi) = (min.log10().floor(), max.log10().ceil());
    let x = |ms: f64| left + (ms.max(1e-3).log10() - lo) / (hi - lo) * plot_w;
    // Tail scale: equal room for p0–p90, p90–p99 and p99–p99.9 (the top of the plot,
    // where the slowest writes end).
    let y = |fraction: f64| {
        let tail = (-(1.0 - fraction).max(1e-3).log10()).min(TAIL_DECADES);
        top + (1.0 - tail / TAIL_DECADES) * plot_h
    };

    // Axes, grid and ticks.
    let _ = writeln!(
        out,
        r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>"##
    );
    let mut decade = lo;
    while decade <= hi {
        let at = x(10f64.powf(decade));
        let _ = writeln!(
            out,
            r##"<line x1="{at:.1}" y1="{top}" x2="{at:.1}" y2="{}" stroke="#ddd"/><text x="{at:.1}" y="{}" text-anchor="middle">{}</text>"##,
            top + plot_h,
            top + plot_h + 16.0,
            tick_label(10f64.powf(decade))
        );
        decade += 1.0;
    }
    for (fraction, label) in
        [(0.0, "p0"), (0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9")]
    {
        let at = y(fraction);
        let _ = writeln!(
            out,
            r##"<line x1="{left}" y1="{at:.1}" x2="{}" y2="{at:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            left + plot_w,
            left - 6.0,
            at + 4.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">latency (ms, log scale)</text>"#,
        left + plot_w / 2.0,
        HEIGHT - 8.0
    );
    let _ = writeln!(
        out,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">percentile (tail scale)</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );

    // Curves and legend.
    for (i, (s, ms)) in series.iter().enumerate() {
        let colour = COLOURS[s.colour % COLOURS.len()];
        let dash = if s.dashed { r#" stroke-dasharray="6 4""# } else { "" };
        let mut points = String::new();
        for rank in ranks_to_draw(ms.len()) {
            let fraction = (rank + 1) as f64 / ms.len() as f64;
            let _ = write!(points, "{:.1},{:.1} ", x(ms[rank]), y(fraction));
        }
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.8"{dash} points="{}"/>"#,
            points.trim_end()
        );
        let ly = top + 8.0 + i as f64 * 18.0;
        let lx = left + plot_w + 14.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 26.0,
            lx + 32.0,
            ly + 4.0,
            escape(&s.label)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// The ranks (0-based, ascending, distinct) of `n` sorted samples to draw: evenly spaced
/// on the tail scale, so the slowest writes get as many points as the median, and always
/// the last one.
fn ranks_to_draw(n: usize) -> Vec<usize> {
    let mut ranks: Vec<usize> = (0..=POINTS)
        .map(|k| {
            let fraction = 1.0 - 10f64.powf(-(k as f64) / POINTS as f64 * TAIL_DECADES);
            ((fraction * n as f64).ceil() as usize).clamp(1, n) - 1
        })
        .chain([n - 1])
        .collect();
    ranks.dedup();
    ranks
}

/// `0.01`, `0.1`, `1`, `10`, `100`, `1000` … as tick text.
fn tick_label(ms: f64) -> String {
    if ms >= 1.0 { format!("{ms:.0}") } else { format!("{ms}") }
}

/// Text safe inside an SVG element.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(label: &str, ms: &[u64], colour: usize, dashed: bool) -> Series {
        Series {
            label: label.into(),
            latencies: ms.iter().map(|m| Duration::from_millis(*m)).collect(),
            colour,
            dashed,
        }
    }

    #[test]
    fn each_series_is_a_curve_with_a_legend_entry() {
        let svg = latency_cdf_svg(
            "writes <256 clients>",
            &[
                series("Federator, 256 clients", &[30, 10, 20, 40], 0, false),
                series("etcd, 256 clients", &[100, 5, 50], 0, true),
                series("nothing", &[], 1, false),
            ],
        );
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 2, "empty series are left out");
        assert_eq!(svg.matches("stroke-dasharray").count(), 2, "curve and legend dashed");
        assert!(svg.contains("writes &lt;256 clients&gt;"), "title escaped");
        assert!(svg.contains("Federator, 256 clients") && !svg.contains(">nothing<"));
        // Decades from 1 ms to 1000 ms cover 5..100 ms.
        for tick in [">1<", ">10<", ">100<"] {
            assert!(svg.contains(tick), "{tick} missing");
        }
        // The last point of every curve is at the top (fraction 1).
        let top = format!(",{:.1}\"", MARGIN.2);
        assert_eq!(svg.matches(&top).count(), 2, "{svg}");
    }

    #[test]
    fn no_latencies_say_so() {
        let svg = latency_cdf_svg("empty", &[series("a", &[], 0, false)]);
        assert!(svg.contains("no latencies were recorded"));
        assert!(!svg.contains("<polyline"));
    }

    #[test]
    fn long_series_are_thinned_to_a_bounded_number_of_points() {
        let many: Vec<u64> = (1..=100_000).collect();
        let svg = latency_cdf_svg("many", &[series("a", &many, 0, false)]);
        let points = svg.split("points=\"").nth(1).expect("points").split('"').next().expect("end");
        let count = points.split(' ').count();
        assert!((POINTS / 2..=POINTS + 2).contains(&count), "{count} points");
    }

    #[test]
    fn drawn_ranks_are_distinct_ascending_and_end_with_the_slowest() {
        for n in [1, 2, 7, 1_000, 123_457] {
            let ranks = ranks_to_draw(n);
            assert_eq!(ranks.first(), Some(&0), "n = {n}");
            assert_eq!(ranks.last(), Some(&(n - 1)), "n = {n}");
            assert!(ranks.windows(2).all(|w| w[0] < w[1]), "n = {n}");
        }
        // The slowest 1 % gets about a third of the points.
        let ranks = ranks_to_draw(100_000);
        let tail = ranks.iter().filter(|r| **r >= 99_000).count();
        assert!(tail > POINTS / 4, "{tail} points in the last 1 %");
    }
}
