//! Validation benchmark (issue 14): validates every resource of the Synthea export (and the
//! official R4 examples when `CARAPACE_R4_EXAMPLES` names their package directory) in-process, and
//! prints µs per resource and resources per second for the structural walk alone, the walk with
//! the binding checks (`validate::validate_structure`, a hidden entry for this benchmark), and the
//! whole write-path validator (`validate::validate_resource`: structure and bindings, then the R4
//! invariants), plus how many resources each refuses. As the other benchmarks do on a shared,
//! noisy machine, it also measures `hello-server` (one client, GETs, for the same time as one
//! pass) in the same run and prints each row's resources/s as a ratio of hello's requests/s.
//!
//! Run: `cargo build --release -p carapace-tests --bin validate-bench &&
//! target/release/validate-bench [--synthea DIR] [--passes N]` (default DIR is the shared
//! Synthea-120 export, N = 3; the best pass is reported).

use carapace_core::fhir::validate;
use carapace_tests::{drive, http, synthea, Hello};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Every resource of a Bundle's entries (the Synthea bundles are transactions and batches).
fn entries(bundle: &Value) -> impl Iterator<Item = Value> + '_ {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("resource").cloned())
}

/// The official examples, less the package's definition bundles (as the core test reads them).
fn official(dir: &std::path::Path) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    for path in names {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if !name.ends_with(".json") || name == "package.json" || name.starts_with('.') {
            continue;
        }
        let v: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        if v["resourceType"] == "Bundle"
            && carapace_core::fhir::schema::PACKAGE_DEFINITION_BUNDLES
                .iter()
                .any(|d| v["id"] == *d)
        {
            continue;
        }
        out.push(v);
    }
    Ok(out)
}

/// One way of validating: does the resource pass?
type Check<'a> = Box<dyn Fn(&Value) -> bool + 'a>;

/// The best of `passes` runs of `f` over every resource.
fn time(resources: &[Value], passes: usize, f: impl Fn(&Value) -> bool) -> (Duration, usize) {
    let mut best = Duration::MAX;
    let mut refused = 0;
    for _ in 0..passes.max(1) {
        let start = Instant::now();
        refused = resources.iter().filter(|r| !f(r)).count();
        best = best.min(start.elapsed());
    }
    (best, refused)
}

fn row(set: &str, what: &str, n: usize, (elapsed, refused): (Duration, usize), hello: f64) {
    let secs = elapsed.as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "counts are small")]
    let n_f = n as f64;
    println!(
        "| {set:<17} | {what:<20} | {n:>9} | {:>11.1} | {:>11.0} | {refused:>7} | {hello:>13.0} | {:>19.2}× |",
        secs * 1e6 / n_f,
        n_f / secs,
        n_f / secs / hello
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let dir = arg("--synthea").unwrap_or_else(|| "../shared/data/synthea-120".into());
    let passes: usize = arg("--passes").and_then(|p| p.parse().ok()).unwrap_or(3);
    let mut sets: Vec<(&str, Vec<Value>)> = Vec::new();
    let bundles = synthea::read_dir(std::path::Path::new(&dir))?;
    sets.push((
        "Synthea",
        bundles.iter().flat_map(|b| entries(&b.bundle)).collect(),
    ));
    if let Some(examples) = std::env::var_os("CARAPACE_R4_EXAMPLES") {
        sets.push((
            "official examples",
            official(std::path::Path::new(&examples))?,
        ));
    }
    let hello = Hello::start().await?;
    println!(
        "| set               | validation           | resources | µs/resource | resources/s | refused | hello (req/s) | resources/s ÷ hello |"
    );
    println!(
        "|-------------------|----------------------|-----------|-------------|-------------|---------|---------------|---------------------|"
    );
    let no_error = |issues: Vec<validate::Issue>| !issues.iter().any(validate::Issue::is_error);
    for (name, resources) in &sets {
        let rows: [(&str, Check); 3] = [
            (
                "structure",
                Box::new(|r| no_error(validate::validate_structure(r, false))),
            ),
            (
                "+ bindings",
                Box::new(|r| no_error(validate::validate_structure(r, true))),
            ),
            (
                "+ invariants (all)",
                Box::new(|r| validate::validate_resource(r).is_ok()),
            ),
        ];
        for (what, check) in rows {
            let timing = time(resources, passes, check);
            // The yardstick, right after the row, for as long as one pass took.
            let seconds = (timing.0.as_secs_f64()).clamp(1.0, 10.0);
            let url = hello.url("/");
            let yardstick = drive(1, seconds, move |_| {
                let url = url.clone();
                async move { matches!(http("GET", &url, &[], None).await, Ok(r) if r.status == 200) }
            })
            .await;
            row(name, what, resources.len(), timing, yardstick.throughput());
        }
    }
    Ok(())
}
