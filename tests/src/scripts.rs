//! The published clients' scripts (`tests/browser/*.mjs` under Node, `tests/clients/*.py` under
//! the clients' Python): run one, fail the test with its output if it fails, and read the one
//! JSON line it prints last.

use serde_json::Value;

/// Run `program` with `args` and `env` in `dir`; the JSON report it printed last.
pub async fn report(
    program: &str,
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Value {
    let out = tokio::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run the client script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.trim().lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("the report is not JSON ({e}): {stdout}"))
}

/// A Node script of `tests/browser/` (whose `node_modules` hold the published clients).
pub async fn node(script: &str, env: &[(&str, &str)]) -> Value {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        dir.join("node_modules").exists(),
        "run `npm ci` in tests/browser"
    );
    report("node", &dir, &[script], env).await
}
