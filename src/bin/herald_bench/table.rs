//! The readable table of a report: the headline numbers of the JSON report, one per
//! row, for a person reading the run's output.

use serde_json::Value;

/// A report value as the table shows it: "-" for null, a fraction with two decimals
/// (none from 100 up), anything else as it is.
fn fmt(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            if n.is_f64() {
                if f.abs() >= 100.0 {
                    format!("{f:.0}")
                } else {
                    format!("{f:.2}")
                }
            } else {
                n.to_string()
            }
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The readable table.
pub fn table(r: &Value) -> String {
    let mut rows = outcome_rows(r);
    rows.extend(measurement_rows(r));
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<width$}  {v}\n"));
    }
    for a in r["aux"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<width$}  {} s ({} µs per delivery)\n",
            format!("{} CPU", fmt(&a["name"])),
            fmt(&a["cpu_s_publish"]),
            fmt(&a["cpu_us_per_delivery"]),
        ));
    }
    out
}

/// The rows of what the run did: scenario, connects, publishes, deliveries.
fn outcome_rows(r: &Value) -> Vec<(&'static str, String)> {
    vec![
        ("label", fmt(&r["label"])),
        (
            "connections / channels / nodes",
            format!(
                "{} / {} / {}",
                fmt(&r["scenario"]["connections"]),
                fmt(&r["scenario"]["channels"]),
                r["scenario"]["nodes"].as_array().map_or(0, |a| a.len())
            ),
        ),
        (
            "connect: subscribed, secs, per sec, failed",
            format!(
                "{}, {} s, {}/s, {}",
                fmt(&r["connect"]["subscribed"]),
                fmt(&r["connect"]["secs"]),
                fmt(&r["connect"]["per_sec"]),
                fmt(&r["connect"]["failed"])
            ),
        ),
        (
            "publish: rate asked, achieved, ok, failed",
            format!(
                "{}/s, {}/s, {}, {}",
                fmt(&r["scenario"]["rate"]),
                fmt(&r["publish"]["per_sec"]),
                fmt(&r["publish"]["ok"]),
                fmt(&r["publish"]["failed"])
            ),
        ),
        (
            "deliveries: expected, received, lost, duplicates",
            format!(
                "{}, {}, {}, {}",
                fmt(&r["deliveries"]["expected"]),
                fmt(&r["deliveries"]["received"]),
                fmt(&r["deliveries"]["lost"]),
                fmt(&r["deliveries"]["duplicates"])
            ),
        ),
        ("deliveries per second", fmt(&r["deliveries"]["per_sec"])),
    ]
}

/// The rows of how it went: latencies, CPU and memory, closes, the machine's load.
fn measurement_rows(r: &Value) -> Vec<(&'static str, String)> {
    vec![
        (
            "latency µs p50 / p90 / p99 / p99.9 / max",
            format!(
                "{} / {} / {} / {} / {}",
                fmt(&r["latency_us"]["p50"]),
                fmt(&r["latency_us"]["p90"]),
                fmt(&r["latency_us"]["p99"]),
                fmt(&r["latency_us"]["p999"]),
                fmt(&r["latency_us"]["max"])
            ),
        ),
        (
            "publish µs p50 / p99: acknowledged, waited to be sent",
            format!(
                "{} / {}, {} / {}",
                fmt(&r["publish"]["ack_us"]["p50"]),
                fmt(&r["publish"]["ack_us"]["p99"]),
                fmt(&r["publish"]["send_lag_us"]["p50"]),
                fmt(&r["publish"]["send_lag_us"]["p99"])
            ),
        ),
        (
            "node CPU µs per delivery",
            fmt(&r["node_cpu_us_per_delivery"]),
        ),
        ("node cores busy (window)", fmt(&r["node_cores"])),
        (
            "node RSS KiB per connection",
            fmt(&r["rss_kib_per_connection"]),
        ),
        (
            "load tool cores busy (window)",
            fmt(&r["tool"]["cores_window"]),
        ),
        ("closes", r["deliveries"]["closes"].to_string()),
        (
            "machine load average, start / end",
            format!(
                "{} / {}",
                fmt(&r["loadavg"]["start"]),
                fmt(&r["loadavg"]["end"])
            ),
        ),
    ]
}
