//! Counting API requests from the API server's audit log (benchmarks).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;

/// Distinct requests per verb in the audit log after `offset`, from clients whose user
/// agent starts with `prefix`.
pub fn count_requests(audit_log: &Path, offset: u64, prefix: &str) -> BTreeMap<String, usize> {
    let mut f = std::fs::File::open(audit_log).expect("audit log");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut seen = HashSet::new();
    let mut counts = BTreeMap::new();
    for line in BufReader::new(f).lines().map_while(Result::ok) {
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let ua = ev["userAgent"].as_str().unwrap_or("");
        let id = ev["auditID"].as_str().unwrap_or("").to_owned();
        if ua.starts_with(prefix) && seen.insert(id) {
            let verb = ev["verb"].as_str().unwrap_or("?").to_owned();
            let sub = ev["objectRef"]["subresource"]
                .as_str()
                .map(|s| format!("/{s}"))
                .unwrap_or_default();
            let resource = ev["objectRef"]["resource"].as_str().unwrap_or("");
            *counts.entry(format!("{verb} {resource}{sub}")).or_insert(0) += 1;
        }
    }
    counts
}
