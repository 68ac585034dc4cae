//! Latency samples and table rows.

use std::time::Duration;

/// Latencies of one benchmark.
#[derive(Default)]
pub struct Samples {
    samples: Vec<Duration>,
}

impl Samples {
    pub fn push(&mut self, sample: Duration) {
        self.samples.push(sample);
    }

    pub fn extend(&mut self, other: Samples) {
        self.samples.extend(other.samples);
    }

    /// The `q` quantile (0..=1), formatted.
    pub fn quantile(&mut self, q: f64) -> String {
        if self.samples.is_empty() {
            return "-".to_owned();
        }
        self.samples.sort_unstable();
        let idx = ((self.samples.len() - 1) as f64 * q).round() as usize;
        format_duration(self.samples[idx])
    }
}

pub fn format_duration(duration: Duration) -> String {
    let us = duration.as_secs_f64() * 1e6;
    if us < 1000.0 { format!("{us:.0} µs") } else { format!("{:.2} ms", us / 1000.0) }
}

pub fn format_rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2}M ev/s", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.1}k ev/s", per_second / 1e3)
    } else {
        format!("{per_second:.0} ev/s")
    }
}

/// Prints one table row.
pub fn row(name: &str, result: &str, samples: Option<&mut Samples>, baseline: Option<f64>, value: Option<f64>) {
    let (p50, p99, p999) = match samples {
        Some(samples) => (samples.quantile(0.5), samples.quantile(0.99), samples.quantile(0.999)),
        None => ("-".into(), "-".into(), "-".into()),
    };
    let (baseline_text, ratio) = match (baseline, value) {
        (Some(baseline), Some(value)) => (format_rate(baseline), format!("{:.2}x", value / baseline)),
        _ => ("-".into(), "-".into()),
    };
    println!("| {name} | {result} | {p50} | {p99} | {p999} | {baseline_text} | {ratio} |");
}
