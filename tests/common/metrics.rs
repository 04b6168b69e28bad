//! Reading the gateway's Prometheus endpoint (`metrics.listen`).

use std::time::{Duration, Instant};

use super::{client, free_port, wait_for_port};

/// `metrics:` config on a fresh port; returns (yaml, port).
pub fn metrics_config() -> (String, u16) {
    let port = free_port();
    (format!("metrics:\n  listen: \"127.0.0.1:{port}\"\n"), port)
}

/// The text of `/metrics` on `port` (panics when it cannot be read).
pub fn scrape(port: u16) -> String {
    client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

/// The value of the line for `series` (labels included, written as the
/// endpoint writes them) in a scrape, if there is one.
pub fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
}

/// A metric's value (0 when not exported yet), once the endpoint listens.
/// `series` includes labels.
pub fn metric(port: u16, series: &str) -> f64 {
    wait_for_port(port, Duration::from_secs(15));
    series_value(&scrape(port), series).unwrap_or(0.0)
}

/// A metric's value, or None when it is not exported or the endpoint does
/// not answer (yet).
pub fn try_metric(port: u16, series: &str) -> Option<f64> {
    let text = client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .ok()?
        .text()
        .ok()?;
    series_value(&text, series)
}

/// The sum of the series named `name` whose labels include every pair in
/// `labels` (0 when none is exported yet), once the endpoint listens.
pub fn metric_sum(port: u16, name: &str, labels: &[(&str, &str)]) -> f64 {
    wait_for_port(port, Duration::from_secs(15));
    let text = scrape(port);
    let mut total = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, ls) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let have: Vec<&str> = ls.split(',').map(str::trim).collect();
        if labels
            .iter()
            .all(|(k, v)| have.contains(&format!("{k}=\"{v}\"").as_str()))
        {
            total += value.trim().parse::<f64>().unwrap();
        }
    }
    total
}

/// Wait (generously: 20 s) until `metric_sum` reaches `at_least`; its value.
pub fn wait_for_metric_sum(port: u16, name: &str, labels: &[(&str, &str)], at_least: f64) -> f64 {
    let start = Instant::now();
    loop {
        let v = metric_sum(port, name, labels);
        if v >= at_least {
            return v;
        }
        if start.elapsed() > Duration::from_secs(20) {
            panic!("{name}{labels:?} is {v}, expected at least {at_least} after 20 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
