//! Draws the charts of docs/PERFORMANCE.md from the `RESULT …` lines the benchmarks print: throughput,
//! latency and memory against the number of sellers, SQLite and PostgreSQL on one chart, targets as dashed
//! lines. Plain SVG written here (a few axes, polylines and labels), so no font or drawing library is needed.
//!
//! ```sh
//! cargo bench --bench plots -- OUT_DIR LOG_FILE...
//! ```
#![expect(clippy::expect_used, reason = "a benchmark tool fails loudly")]

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One `RESULT kind k=v …` line.
struct Row {
    kind: String,
    kv: BTreeMap<String, String>,
}

impl Row {
    fn get(&self, k: &str) -> Option<&str> {
        self.kv.get(k).map(String::as_str)
    }
    fn num(&self, k: &str) -> Option<f64> {
        self.get(k)
            .and_then(|v| v.parse().ok())
            .filter(|v: &f64| v.is_finite())
    }
}

fn parse(text: &str) -> Vec<Row> {
    text.lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(|l| {
            let mut it = l.split_whitespace();
            let kind = it.next().unwrap_or_default().to_owned();
            let kv = it
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            Row { kind, kv }
        })
        .collect()
}

type Series = (String, Vec<(f64, f64)>);
/// A chart to write: file name, title, y unit, its series and its target lines.
type Chart = (
    &'static str,
    &'static str,
    &'static str,
    Vec<Series>,
    Vec<(String, f64)>,
);

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn fmt_num(v: f64) -> String {
    if v >= 1000.0 {
        let k = v / 1000.0;
        if (k - k.round()).abs() < 1e-9 {
            format!("{k:.0}k")
        } else {
            format!("{k:.1}k")
        }
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 0.1 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// A line chart with a logarithmic x axis (sellers) and a linear y axis from 0; `targets` are horizontal
/// dashed lines with their labels.
fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    targets: &[(String, f64)],
) -> String {
    let (w, h) = (720.0, 420.0);
    let (left, right, top, bottom) = (80.0, 200.0, 40.0, 60.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .chain(targets.iter().map(|t| t.1))
        .collect();
    let xmin = xs.iter().copied().fold(f64::INFINITY, f64::min).max(1.0);
    let xmax = xs.iter().copied().fold(0.0, f64::max).max(xmin * 10.0);
    let (lx0, lx1) = (xmin.log10().floor(), xmax.log10().ceil());
    let ymax_raw = ys.iter().copied().fold(0.0, f64::max).max(1e-9) * 1.1;
    let step = {
        let raw = ymax_raw / 5.0;
        let mag = 10f64.powf(raw.log10().floor());
        let n = raw / mag;
        mag * if n <= 1.0 {
            1.0
        } else if n <= 2.0 {
            2.0
        } else if n <= 5.0 {
            5.0
        } else {
            10.0
        }
    };
    let ymax = (ymax_raw / step).ceil() * step;
    // Figures spanning several decades (latency from milliseconds to minutes) get a logarithmic y axis.
    let ymin_pos = ys
        .iter()
        .copied()
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let log_y = ymin_pos.is_finite() && ymax_raw / ymin_pos > 1000.0;
    let (ly0, ly1) = (
        ymin_pos.max(1e-9).log10().floor(),
        ymax_raw.max(1e-9).log10().ceil(),
    );
    let px = |x: f64| left + (x.max(1e-9).log10() - lx0) / (lx1 - lx0).max(1e-9) * pw;
    let py = |y: f64| {
        if log_y {
            top + ph - (y.max(10f64.powf(ly0)).log10() - ly0) / (ly1 - ly0).max(1e-9) * ph
        } else {
            top + ph - y / ymax * ph
        }
    };
    let ticks: Vec<f64> = if log_y {
        (ly0 as i32..=ly1 as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..)
            .map(|i| f64::from(i) * step)
            .take_while(|y| *y <= ymax + step / 2.0)
            .collect()
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>
"#,
        left + pw / 2.0,
        esc(title)
    );
    // Grid and axes.
    for y in ticks {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="#ddd"/><text x="{2}" y="{3}" text-anchor="end">{4}</text>"##,
            py(y),
            left + pw,
            left - 6.0,
            py(y) + 4.0,
            fmt_num(y)
        );
    }
    let mut e = lx0;
    while e <= lx1 + 1e-9 {
        let x = px(10f64.powf(e));
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{0}" stroke="#ddd"/><text x="{x}" y="{1}" text-anchor="middle">{2}</text>"##,
            top + ph,
            top + ph + 18.0,
            fmt_num(10f64.powf(e))
        );
        e += 1.0;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>"##,
        left + pw / 2.0,
        h - 15.0,
        esc(x_label),
        top + ph / 2.0,
        esc(y_label)
    );
    let mut legend_y = top + 10.0;
    for (i, (label, y)) in targets.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="#000" stroke-dasharray="6,4"/><text x="{2}" y="{3}" font-size="11">{4}</text>"##,
            py(*y),
            left + pw,
            left + pw + 8.0,
            py(*y) + 4.0 + i as f64 * 0.0,
            esc(label)
        );
    }
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut pts = pts.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for (x, y) in &pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"><title>{}: {} → {}</title></circle>"#,
                px(*x),
                py(*y),
                esc(name),
                fmt_num(*x),
                fmt_num(*y)
            );
        }
        legend_y += 18.0;
        let _ = writeln!(
            s,
            r#"<line x1="{0}" y1="{legend_y}" x2="{1}" y2="{legend_y}" stroke="{color}" stroke-width="3"/><text x="{2}" y="{3}">{4}</text>"#,
            left + pw + 8.0,
            left + pw + 28.0,
            left + pw + 34.0,
            legend_y + 4.0,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Series of `y` against `x` for the rows of `kind` passing `keep`, one per value of `group`.
fn series(
    rows: &[Row],
    kind: &str,
    keep: impl Fn(&Row) -> bool,
    group: impl Fn(&Row) -> String,
    x: &str,
    y: &str,
) -> Vec<Series> {
    let mut by: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.kind == kind && keep(r)) {
        if let (Some(xv), Some(yv)) = (r.num(x), r.num(y)) {
            by.entry(group(r)).or_default().push((xv, yv));
        }
    }
    by.into_iter().collect()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (out, logs) = args
        .split_first()
        .expect("usage: plots OUT_DIR LOG_FILE...");
    std::fs::create_dir_all(out).expect("out dir");
    let mut rows = Vec::new();
    for f in logs {
        if let Ok(t) = std::fs::read_to_string(f) {
            rows.extend(parse(&t));
        }
    }
    let write = |name: &str, svg: String| {
        let path = format!("{out}/{name}.svg");
        std::fs::write(&path, svg).expect("write svg");
        println!("wrote {path}");
    };
    let backend = |r: &Row| r.get("backend").unwrap_or("?").to_owned();
    // Latency: p99 against sellers, per backend and kind of deal.
    let lat = series(
        &rows,
        "latency",
        |_| true,
        |r| format!("{} {} p99", backend(r), r.get("deal").unwrap_or("")),
        "sellers",
        "p99",
    );
    if !lat.is_empty() {
        write(
            "latency-p99",
            chart(
                "Added latency, 202 → leads/complex (p99)",
                "sellers (orders/s: 10 over 10, 100 over 1k, 1k over 10k)",
                "ms",
                &lat,
                &[
                    ("target 50 ms (100/s, 1k sellers)".into(), 50.0),
                    ("target 250 ms (1k/s, 10k sellers)".into(), 250.0),
                ],
            ),
        );
    }
    let sel = |phase: &'static str, y: &'static str| {
        series(
            &rows,
            "sellers",
            move |r| r.get("phase") == Some(phase),
            backend,
            "n",
            y,
        )
    };
    let charts: [Chart; 5] = [
        (
            "sellers-refresh-seconds",
            "Refresh sweep of every connection (50 ms sandbox latency)",
            "seconds",
            sel("refresh", "secs"),
            vec![("target 150 s at 100k".into(), 150.0)],
        ),
        (
            "sellers-refresh-memory",
            "Resident memory during the sweep (peak)",
            "MiB",
            sel("refresh", "rss_mib"),
            vec![("target 128 MiB".into(), 128.0)],
        ),
        (
            "sellers-idle-memory",
            "Idle service, workers on: resident memory",
            "MiB",
            sel("idle", "rss_mib"),
            vec![("target 64 MiB".into(), 64.0)],
        ),
        (
            "sellers-push",
            "Order push with N connected sellers (fixed batch, active subset)",
            "orders/s",
            sel("push", "rate"),
            vec![],
        ),
        (
            "sellers-intake",
            "Webhook intake with N connected sellers",
            "req/s",
            sel("intake", "rate"),
            vec![],
        ),
    ];
    for (name, title, unit, s, t) in charts {
        if !s.is_empty() {
            write(name, chart(title, "connected sellers", unit, &s, &t));
        }
    }
    let agg = series(&rows, "aggregate", |_| true, backend, "sellers", "rate");
    if !agg.is_empty() {
        write(
            "aggregate-push",
            chart(
                "Aggregate push on the whole machine",
                "sellers",
                "orders/s",
                &agg,
                &[("target 20,000/s (SQLite, 500)".into(), 20_000.0)],
            ),
        );
    }
    let idle_cpu = sel("idle", "cpu_pct");
    if !idle_cpu.is_empty() {
        write(
            "sellers-idle-cpu",
            chart(
                "Idle service: CPU at rest",
                "connected sellers",
                "% of a core",
                &idle_cpu,
                &[],
            ),
        );
    }
}
