//! What the bench found, and the three files it writes: Markdown (tables), JSON (every number)
//! and an SVG chart (drawn here, no plotting library).
use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::sys::Machine;

/// One part of the bench, as measured.
pub struct Part {
    pub key: &'static str,
    pub title: String,
    /// What was measured and how (Markdown, one paragraph or bullet per entry).
    pub method: Vec<String>,
    pub tables: Vec<Table>,
    pub targets: Vec<Target>,
    /// Ratios reported but not judged: they measure the test harness as much as limiter.
    pub figures: Vec<Figure>,
    /// Which SYN generator made this part's floods (see `flood::GeneratorKind`), when it had one.
    pub generator: Option<String>,
    /// Caveats and observations (Markdown).
    pub notes: Vec<String>,
    pub json: Value,
    pub charts: Vec<Chart>,
}

impl Part {
    pub fn new(key: &'static str, title: &str) -> Part {
        Part {
            key,
            title: title.to_string(),
            method: Vec::new(),
            tables: Vec::new(),
            targets: Vec::new(),
            figures: Vec::new(),
            generator: None,
            notes: Vec::new(),
            json: json!({}),
            charts: Vec::new(),
        }
    }
}

pub struct Table {
    pub caption: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(caption: &str, header: &[&str]) -> Table {
        Table {
            caption: caption.to_string(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

/// A target from the issue and whether this run met it.
#[derive(Clone)]
pub struct Target {
    pub what: String,
    pub goal: String,
    pub measured: String,
    /// None: could not be decided (see `measured`).
    pub met: Option<bool>,
}

impl Target {
    /// `value <= limit` (a ratio that must stay low).
    pub fn at_most(what: &str, value: f64, limit: f64, detail: &str) -> Target {
        Target {
            what: what.to_string(),
            goal: format!("≤ {limit}×"),
            measured: format!("{value:.2}× ({detail})"),
            met: Some(value.is_finite() && value <= limit),
        }
    }

    /// `value >= limit` (a ratio that must stay high).
    pub fn at_least(what: &str, value: f64, limit: f64, detail: &str) -> Target {
        Target {
            what: what.to_string(),
            goal: format!("≥ {limit}×"),
            measured: format!("{value:.2}× ({detail})"),
            met: Some(value.is_finite() && value >= limit),
        }
    }

    pub fn status(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "**MISSED**",
            None => "not decided",
        }
    }

    fn json(&self) -> Value {
        json!({ "what": self.what, "goal": self.goal, "measured": self.measured, "met": self.met })
    }

    /// The same comparison reported as a figure rather than judged, and `why` (one sentence).
    pub fn into_figure(self, why: &str) -> Figure {
        Figure {
            what: self.what,
            measured: self.measured,
            why: why.to_string(),
        }
    }
}

/// A ratio the report gives but does not judge, because it measures the test harness (a floor
/// every configuration pays) as much as limiter; the part's targets measure limiter itself.
#[derive(Clone)]
pub struct Figure {
    pub what: String,
    pub measured: String,
    /// Why it is not a target (one sentence).
    pub why: String,
}

impl Figure {
    fn json(&self) -> Value {
        json!({ "what": self.what, "measured": self.measured, "why_not_a_target": self.why })
    }
}

/// One configuration's connections per second: a table row (median with min–max, the median
/// against two baselines' medians, failed connects) and its bar.
pub fn rate_row(
    table: &mut Table,
    bars: &mut Vec<Bar>,
    label: &str,
    rates: &[f64],
    failed: u64,
    baselines: [f64; 2],
    ours: bool,
) {
    let (lo, med, hi) = spread(rates);
    table.row(vec![
        label.to_string(),
        format!("**{}** ({}–{})", number(med), number(lo), number(hi)),
        format!("{:.3}", med / baselines[0]),
        format!("{:.3}", med / baselines[1]),
        failed.to_string(),
    ]);
    bars.push(Bar {
        label: label.to_string(),
        value: med,
        low: lo,
        high: hi,
        ours,
    });
}

/// A table row of one connection's throughput (bits/s per window, shown in Gbit/s): median with
/// min–max, and its ratio to the two `baselines` (Gbit/s). Returns the row's chart bar.
pub fn throughput_row(
    table: &mut Table,
    label: &str,
    bits: &[f64],
    baselines: [f64; 2],
    ours: bool,
) -> Bar {
    let (lo, med, hi) = spread(&bits.iter().map(|b| b / 1e9).collect::<Vec<_>>());
    table.row(vec![
        label.to_string(),
        format!("**{med:.2}** ({lo:.2}–{hi:.2})"),
        format!("{:.3}", med / baselines[0]),
        format!("{:.3}", med / baselines[1]),
    ]);
    Bar {
        label: label.to_string(),
        value: med,
        low: lo,
        high: hi,
        ours,
    }
}

/// A horizontal bar chart: one bar per entry, with a min–max whisker.
pub struct Chart {
    pub title: String,
    pub unit: String,
    pub bars: Vec<Bar>,
}

pub struct Bar {
    pub label: String,
    pub value: f64,
    pub low: f64,
    pub high: f64,
    /// Drawn in the accent colour (limiter itself).
    pub ours: bool,
}

pub struct Report {
    pub machine: Machine,
    pub settings: Vec<(String, String)>,
    pub parts: Vec<Part>,
    /// Parts that were not measured: (part, why).
    pub missing: Vec<(String, String)>,
    pub noise: Vec<(String, Value)>,
    pub duration_s: f64,
}

impl Report {
    pub fn targets(&self) -> Vec<&Target> {
        self.parts.iter().flat_map(|p| &p.targets).collect()
    }

    pub fn figures(&self) -> Vec<&Figure> {
        self.parts.iter().flat_map(|p| &p.figures).collect()
    }

    pub fn write(&self, dir: &Path) -> Result<Vec<std::path::PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let md = dir.join("report.md");
        let js = dir.join("report.json");
        let svg = dir.join("report.svg");
        std::fs::write(&md, self.markdown())?;
        std::fs::write(&js, serde_json::to_string_pretty(&self.json())? + "\n")?;
        std::fs::write(&svg, self.svg())?;
        Ok(vec![md, js, svg])
    }

    pub fn json(&self) -> Value {
        json!({
            "machine": self.machine.json(),
            "settings": self.settings.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "duration_s": (self.duration_s * 10.0).round() / 10.0,
            "targets": self.targets().iter().map(|t| t.json()).collect::<Vec<_>>(),
            "figures": self.figures().iter().map(|f| f.json()).collect::<Vec<_>>(),
            "parts": self.parts.iter().map(|p| (p.key.to_string(), json!({
                "title": p.title,
                "generator": p.generator,
                "results": p.json,
                "targets": p.targets.iter().map(Target::json).collect::<Vec<_>>(),
                "figures": p.figures.iter().map(Figure::json).collect::<Vec<_>>(),
                "notes": p.notes,
            }))).collect::<serde_json::Map<_, _>>(),
            "not_measured": self.missing.iter().map(|(p, why)| json!({"part": p, "why": why})).collect::<Vec<_>>(),
            "machine_load": self.noise.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<serde_json::Map<_, _>>(),
        })
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "# limiter benchmark report\n");
        let _ = writeln!(
            s,
            "Written by `cargo xtask bench` (xtask/src/bench.rs). Every figure that matters is a \
             ratio against a baseline measured in the same run, on the same machine, side by \
             side; absolute numbers are noisy on a shared 2-core VM and are given for context \
             only. `report.json` has every number, `report.svg` the charts. Where a part \
             interleaves configurations, each repetition measures them in the next row of a \
             balanced Latin square (xtask/src/bench/order.rs): every configuration comes right \
             after every other equally often, so what a window leaves behind (part 2: up to \
             1.5× the next window's CPU per SYN, after the kernel answered a flood itself) \
             falls on all of them alike.\n"
        );
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(
            s,
            "| machine | {} ({} cores{}), {:.1} GiB |",
            m.cpu_model,
            m.cores,
            if m.hypervisor {
                ", virtual machine"
            } else {
                ""
            },
            m.memory_gib
        );
        let _ = writeln!(s, "| kernel | Linux {} `{}` |", m.kernel, m.kernel_version);
        let _ = writeln!(s, "| date | {} |", m.date_utc);
        let _ = writeln!(s, "| limiter commit | {} |", m.git_commit);
        for (k, v) in &m.tools {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        for (k, v) in &self.settings {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        for p in &self.parts {
            if let Some(g) = &p.generator {
                let _ = writeln!(s, "| SYN generator, {} | {g} |", p.title);
            }
        }
        let _ = writeln!(s, "| bench duration | {:.0} s |", self.duration_s);
        let _ = writeln!(s);

        let _ = writeln!(s, "## Targets\n");
        let _ = writeln!(
            s,
            "| target | goal | measured | result |\n|---|---|---|---|"
        );
        for t in self.targets() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                t.what,
                t.goal,
                t.measured,
                t.status()
            );
        }
        let count = |v: Option<bool>| self.targets().iter().filter(|t| t.met == v).count();
        let _ = writeln!(
            s,
            "\n{} targets met, {} missed, {} not decided (see the parts below for what was \
             measured and how).\n",
            count(Some(true)),
            count(Some(false)),
            count(None)
        );
        if !self.figures().is_empty() {
            let _ = writeln!(s, "## Figures (reported, not targets)\n");
            let _ = writeln!(
                s,
                "Ratios whose baseline is mostly the test harness's own floor, so they measure \
                 the harness as much as limiter; each part's targets measure limiter itself.\n"
            );
            let _ = writeln!(s, "| figure | measured | why not a target |\n|---|---|---|");
            for f in self.figures() {
                let _ = writeln!(s, "| {} | {} | {} |", f.what, f.measured, f.why);
            }
            let _ = writeln!(s);
        }
        if !self.missing.is_empty() {
            let _ = writeln!(s, "## Not measured\n");
            for (part, why) in &self.missing {
                let _ = writeln!(s, "- **{part}**: {why}");
            }
            let _ = writeln!(s);
        }
        for part in &self.parts {
            let _ = writeln!(s, "## {}\n", part.title);
            if let Some(g) = &part.generator {
                let _ = writeln!(s, "SYN generator in this run: {g}.\n");
            }
            for m in &part.method {
                let _ = writeln!(s, "{m}\n");
            }
            for t in &part.tables {
                let _ = writeln!(s, "{}\n", t.caption);
                let _ = writeln!(s, "| {} |", t.header.join(" | "));
                let _ = writeln!(
                    s,
                    "|{}|",
                    t.header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
                );
                for r in &t.rows {
                    let _ = writeln!(s, "| {} |", r.join(" | "));
                }
                let _ = writeln!(s);
            }
            if !part.targets.is_empty() {
                for t in &part.targets {
                    let _ = writeln!(
                        s,
                        "- Target: {} {} — measured {} — {}",
                        t.what,
                        t.goal,
                        t.measured,
                        t.status()
                    );
                }
                let _ = writeln!(s);
            }
            if !part.figures.is_empty() {
                for f in &part.figures {
                    let _ = writeln!(
                        s,
                        "- Figure (not a target): {} — measured {}. Why not a target: {}",
                        f.what, f.measured, f.why
                    );
                }
                let _ = writeln!(s);
            }
            for n in &part.notes {
                let _ = writeln!(s, "- {n}");
            }
            if !part.notes.is_empty() {
                let _ = writeln!(s);
            }
        }
        if !self.noise.is_empty() {
            let _ = writeln!(s, "## Machine load around each part\n");
            let _ = writeln!(
                s,
                "The machine is shared: other sessions build and test on it. 1-minute load \
                 average and the number of rustc and test processes, sampled before and after \
                 each part (the bench waits for other test runs to finish before it starts).\n"
            );
            let _ = writeln!(
                s,
                "| when | load (1 min) | rustc | tests |\n|---|---|---|---|"
            );
            for (k, v) in &self.noise {
                let _ = writeln!(
                    s,
                    "| {k} | {} | {} | {} |",
                    v["loadavg_1m"], v["rustc_processes"], v["test_processes"]
                );
            }
            let _ = writeln!(s);
        }
        s
    }

    pub fn svg(&self) -> String {
        let charts: Vec<&Chart> = self.parts.iter().flat_map(|p| &p.charts).collect();
        render_svg(
            &format!(
                "limiter bench — {} ({} cores), Linux {}, {}",
                self.machine.cpu_model,
                self.machine.cores,
                self.machine.kernel,
                self.machine.date_utc
            ),
            &charts,
        )
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Stacks the charts vertically into one SVG document.
pub fn render_svg(heading: &str, charts: &[&Chart]) -> String {
    // Room for the longest label (about 6.8 px per character at 12 px).
    let longest = charts
        .iter()
        .flat_map(|c| &c.bars)
        .map(|b| b.label.chars().count())
        .max()
        .unwrap_or(0);
    let label_w = (longest as f64 * 6.8 + 20.0).max(200.0);
    let width = label_w + 630.0;
    const BAR_H: f64 = 20.0;
    const GAP: f64 = 8.0;
    const RIGHT: f64 = 130.0;
    let mut body = String::new();
    let mut y = 50.0;
    for chart in charts {
        let _ = writeln!(
            body,
            r#"<text x="10" y="{y}" font-size="15" font-weight="bold">{}</text>"#,
            escape(&chart.title)
        );
        y += 12.0;
        let max = chart
            .bars
            .iter()
            .map(|b| b.high.max(b.value))
            .fold(0.0_f64, f64::max)
            .max(f64::MIN_POSITIVE);
        let scale = (width - label_w - RIGHT) / max;
        for bar in &chart.bars {
            y += GAP;
            let w = (bar.value * scale).max(1.0);
            let colour = if bar.ours { "#d9480f" } else { "#5c7cfa" };
            let _ = writeln!(
                body,
                r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"#,
                label_w - 8.0,
                y + BAR_H * 0.7,
                escape(&bar.label)
            );
            let _ = writeln!(
                body,
                r#"<rect x="{label_w:.1}" y="{y:.1}" width="{w:.1}" height="{BAR_H}" fill="{colour}"/>"#
            );
            if bar.high > bar.low {
                let (x1, x2, ym) = (
                    label_w + bar.low * scale,
                    label_w + bar.high * scale,
                    y + BAR_H / 2.0,
                );
                let _ = writeln!(
                    body,
                    r#"<path d="M{x1:.1} {ym:.1} H{x2:.1} M{x1:.1} {:.1} V{:.1} M{x2:.1} {:.1} V{:.1}" stroke="black" stroke-width="1.2"/>"#,
                    ym - 5.0,
                    ym + 5.0,
                    ym - 5.0,
                    ym + 5.0
                );
            }
            let _ = writeln!(
                body,
                r#"<text x="{:.1}" y="{:.1}" font-size="12">{} {}</text>"#,
                label_w + bar.high.max(bar.value) * scale + 6.0,
                y + BAR_H * 0.7,
                number(bar.value),
                escape(&chart.unit)
            );
            y += BAR_H;
        }
        y += 36.0;
    }
    let _ = writeln!(
        body,
        r##"<text x="10" y="{:.1}" font-size="11" fill="#555">Bars: median; whiskers: min–max over repetitions (part 1: over runs). Orange: limiter. Ratios against baselines measured in the same run are in report.md.</text>"##,
        y - 14.0
    );
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{:.0}" viewBox="0 0 {width:.0} {:.0}" font-family="DejaVu Sans, Arial, sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="26" font-size="17" font-weight="bold">{}</text>
{body}</svg>
"#,
        y,
        y,
        escape(heading)
    )
}

/// A number with as many decimals as its size calls for.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v.fract() == 0.0 || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// min, median, max of `a[i] / b[i]`: a paired comparison of two configurations measured in
/// the same repetitions, each of `a`'s windows against `b`'s window of the same repetition
/// (next to each other in time, so the machine's slow swings cancel out of each ratio).
pub fn paired_ratio(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    spread(&a.iter().zip(b).map(|(a, b)| a / b).collect::<Vec<_>>())
}

/// The median of `a[i] - b[i]`: what one configuration adds to another, window by window (see
/// [`paired_ratio`]).
pub fn paired_difference(a: &[f64], b: &[f64]) -> f64 {
    spread(&a.iter().zip(b).map(|(a, b)| a - b).collect::<Vec<_>>()).1
}

/// A target on CPU per refused SYN against the bare XDP drop's, window by window (see
/// [`paired_ratio`]): the median of `limiter[i] / floor[i]`, ≤ `goal`.
pub fn paired_cost_target(what: String, limiter: &[f64], floor: &[f64], goal: f64) -> Target {
    let (lo, times, hi) = paired_ratio(limiter, floor);
    Target {
        what,
        goal: format!("≤ {goal}×"),
        measured: format!(
            "{times:.2}× (median of {} paired repetitions, {lo:.2}–{hi:.2}×; medians {} vs {} ns)",
            limiter.len().min(floor.len()),
            number(spread(limiter).1),
            number(spread(floor).1)
        ),
        met: Some(times.is_finite() && times <= goal),
    }
}

/// A target on what two filters each add to the CPU per refused SYN of the bare XDP drop (the
/// floor: what the test bed costs every configuration alike), window by window: the median of
/// `other[i] - floor[i]` over the median of `limiter[i] - floor[i]`, ≥ `goal`. The ratio of the
/// totals is given beside it.
pub fn over_floor_target(
    what: String,
    other: &[f64],
    limiter: &[f64],
    floor: &[f64],
    goal: f64,
) -> Target {
    let (limiter_over, other_over) = (
        paired_difference(limiter, floor),
        paired_difference(other, floor),
    );
    // Below 1 ns over the floor is within its noise: taken as 1 ns, so the ratio is a bound.
    let ratio = other_over / limiter_over.max(1.0);
    let (other_all, limiter_all) = (spread(other).1, spread(limiter).1);
    Target {
        what,
        goal: format!("≥ {goal}×"),
        measured: format!(
            "{} ({} vs {} ns over the floor of {} ns, medians of the windows' differences; in \
             all, {:.2}×: {} vs {} ns)",
            if limiter_over < 1.0 {
                format!("≥ {ratio:.0}× (limiter at the floor or below it: taken as 1 ns over it)")
            } else {
                format!("{ratio:.1}×")
            },
            number(other_over),
            number(limiter_over),
            number(spread(floor).1),
            other_all / limiter_all,
            number(other_all),
            number(limiter_all)
        ),
        met: Some(ratio.is_finite() && ratio >= goal),
    }
}

/// A target on a paired ratio of rates (see [`paired_ratio`]): ≥ `goal`, as a percentage.
pub fn paired_rate_target(what: String, limiter: &[f64], baseline: &[f64], goal: f64) -> Target {
    let (lo, ratio, hi) = paired_ratio(limiter, baseline);
    Target {
        what,
        goal: format!("≥ {:.0}%", goal * 100.0),
        measured: format!(
            "{:.1}% (median of {} paired repetitions, {:.1}–{:.1}%; medians {} vs {} \
             connections/s)",
            ratio * 100.0,
            limiter.len().min(baseline.len()),
            lo * 100.0,
            hi * 100.0,
            number(spread(limiter).1),
            number(spread(baseline).1)
        ),
        met: Some(ratio.is_finite() && ratio >= goal),
    }
}

/// min, median, max of some values (NaN for none).
pub fn spread(values: &[f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (v[0], median, v[v.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_min_median_max() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), (1.0, 2.5, 4.0));
        assert!(spread(&[]).1.is_nan());
    }

    #[test]
    fn targets_say_met_or_missed() {
        assert_eq!(Target::at_most("x", 1.2, 1.3, "").status(), "met");
        assert_eq!(Target::at_most("x", 1.4, 1.3, "").status(), "**MISSED**");
        assert_eq!(Target::at_least("x", 7.0, 6.0, "").status(), "met");
        assert_eq!(
            Target::at_least("x", f64::NAN, 6.0, "").status(),
            "**MISSED**"
        );
    }

    #[test]
    fn svg_is_one_document() {
        let chart = Chart {
            title: "t <1>".into(),
            unit: "ns".into(),
            bars: vec![Bar {
                label: "a & b".into(),
                value: 2.0,
                low: 1.0,
                high: 3.0,
                ours: true,
            }],
        };
        let svg = render_svg("h", &[&chart]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;1&gt;") && svg.contains("a &amp; b"));
    }
}
