//! The figures of one scenario: a table on stderr and `target/reliability/<scenario>.json`.

use std::time::Duration;

use serde_json::{Map, Value, json};

pub(crate) struct Report {
    scenario: String,
    fields: Map<String, Value>,
}

impl Report {
    pub(crate) fn new(scenario: &str, scale: u32) -> Report {
        let mut fields = Map::new();
        fields.insert("scenario".into(), json!(scenario));
        fields.insert("chaos_scale".into(), json!(scale));
        Report {
            scenario: scenario.to_owned(),
            fields,
        }
    }

    pub(crate) fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.fields.insert(key.to_owned(), value.into());
    }

    /// `<name>_p50_ms`, `<name>_p99_ms`, `<name>_max_ms`... for each of `which` ("p50", "p99",
    /// "max").
    pub(crate) fn set_percentiles(&mut self, name: &str, samples: &[Duration], which: &[&str]) {
        for w in which {
            let p = match *w {
                "max" => 100.0,
                other => other
                    .strip_prefix('p')
                    .and_then(|n| n.parse::<f64>().ok())
                    .unwrap_or_else(|| panic!("not a percentile: {other}")),
            };
            self.set(&format!("{name}_{w}_ms"), percentile_ms(samples, p));
        }
    }

    pub(crate) fn set_ms(&mut self, key: &str, d: Duration) {
        self.set(key, ms(d));
    }

    /// Prints the table and writes the JSON file.
    pub(crate) fn finish(&self) {
        let mut table = format!("\n== reliability: {} ==\n", self.scenario);
        let width = self.fields.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in &self.fields {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            table.push_str(&format!("  {k:<width$}  {v}\n"));
        }
        eprintln!("{table}");
        let dir = crate::harness::reliability_dir();
        std::fs::create_dir_all(&dir).expect("target/reliability");
        let path = dir.join(format!("{}.json", self.scenario));
        let text =
            serde_json::to_string_pretty(&Value::Object(self.fields.clone())).expect("report json");
        std::fs::write(&path, text + "\n")
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        eprintln!("  written to {}", path.display());
    }
}

/// Milliseconds with one decimal.
pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// The `p`-th percentile (0..=100) in milliseconds; 0 for no samples.
pub(crate) fn percentile_ms(samples: &[Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut v = samples.to_vec();
    v.sort();
    let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    ms(v[rank.min(v.len() - 1)])
}
