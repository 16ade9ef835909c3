//! Conformance runner: round-trips every official R4 example against a Carapace server and prints
//! the count and each failure's reason. See `conformance/README.md`.
//!
//! `conformance [--base URL] [--examples DIR] [--concurrency N] [--integrity on|off]` — without
//! `--base`, it starts its own private PostgreSQL, `bao server -dev` and `carapace-server`, with
//! referential integrity off unless `--integrity on` (the examples refer to examples that are not
//! loaded, or come later; against `--base`, start that server with
//! `CARAPACE_REFERENTIAL_INTEGRITY=off`).

use carapace_tests::conformance::round_trip_all;
use carapace_tests::*;
use std::path::PathBuf;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let examples = arg("--examples")
        .map(PathBuf::from)
        .or_else(examples_dir)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no examples: pass --examples DIR (npm pack hl7.fhir.r4.examples, then tar xzf)"
            )
        })?;
    let concurrency = arg("--concurrency")
        .and_then(|c| c.parse().ok())
        .unwrap_or(8);
    let (stack, base, authorization) = match arg("--base") {
        Some(base) => {
            let token = std::env::var("CARAPACE_TOKEN").map_err(|_| {
                anyhow::anyhow!("with --base, put an access token in CARAPACE_TOKEN")
            })?;
            (
                None,
                base.trim_end_matches('/').to_string(),
                format!("Bearer {token}"),
            )
        }
        None => {
            let stack = Stack::start_with(
                Bao::start_dev().await?,
                vec![(
                    "CARAPACE_REFERENTIAL_INTEGRITY".into(),
                    arg("--integrity").unwrap_or_else(|| "off".into()),
                )],
            )
            .await?;
            let base = stack.server.base.clone();
            let authorization = stack.server.bearer();
            (Some(stack), base, authorization)
        }
    };
    eprintln!("round-tripping {} against {base}", examples.display());
    let report = round_trip_all(&base, &authorization, &examples, concurrency).await?;
    print!("{}", report.summary());
    drop(stack);
    let bad = report.count(|v| {
        matches!(
            v,
            carapace_tests::conformance::Verdict::Mismatch(_)
                | carapace_tests::conformance::Verdict::ServerError(_)
        )
    });
    std::process::exit(if bad == 0 { 0 } else { 1 })
}
