//! Each service's OpenAPI spec is its contract, and schemathesis proves it:
//! it derives requests from `/openapi.json` (valid ones, and ones that break
//! the schema), sends them with the admin token, and checks every answer
//! against the spec: declared status, content type, headers and body
//! schema, no server error, valid requests accepted, invalid ones refused,
//! admin routes refusing a missing token, 405 with `Allow`.
//!
//! Needs the `schemathesis` CLI: `SCHEMATHESIS` names it (`scripts/test.sh`
//! installs it into `.run/venv` and sets it), else `.run/venv/bin/schemathesis`
//! in the workspace is used. Its reports go under the target directory.
//!
//! The run is seeded, so CI sees the same cases every time and a failure is
//! reproduced by running the test again. `SCHEMATHESIS_SEED=<n>` picks other
//! cases; `SCHEMATHESIS_SEED=random` lets schemathesis pick (it prints the
//! seed it used), which is how to hunt for new failures before they reach CI.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use e2e_tests::{ADMIN_TOKEN, Stack, run_tool};

/// Test cases per operation and phase: enough to reach every status an
/// operation declares, few enough that the three runs take about a minute
/// and a half on two cores.
const MAX_EXAMPLES: &str = "100";

/// The seed when `SCHEMATHESIS_SEED` is not set.
const DEFAULT_SEED: &str = "20261124";

/// The seed to pass, or none for schemathesis's own choice.
fn seed() -> Option<String> {
    match std::env::var("SCHEMATHESIS_SEED") {
        Ok(seed) if seed == "random" => None,
        Ok(seed) => Some(seed),
        Err(_) => Some(DEFAULT_SEED.to_owned()),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn schemathesis() -> PathBuf {
    let cli = std::env::var_os("SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".run/venv/bin/schemathesis"));
    assert!(
        cli.is_file(),
        "the schemathesis CLI is not at {} : run scripts/test.sh (it installs it into \
         .run/venv), or `pip install schemathesis==4.32.5` and set SCHEMATHESIS to its path",
        cli.display()
    );
    cli
}

/// Runs schemathesis against one service; its output, and whether it found
/// nothing.
async fn run_schemathesis(cli: &Path, service: &str, base_url: &str) -> (bool, String) {
    let reports = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("schemathesis")
        .join(service);
    std::fs::create_dir_all(&reports).unwrap();
    let mut command = Command::new(cli);
    command
        // Hypothesis keeps its example database in the working directory.
        .current_dir(&reports)
        .arg("--no-color")
        .arg("--config-file")
        .arg(workspace_root().join("tests/e2e/schemathesis.toml"))
        .arg("run")
        .arg(format!("{base_url}/openapi.json"))
        .args(["--checks", "all"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .args(["--request-timeout", "10"])
        .args(["--report", "junit"])
        .arg("--report-dir")
        .arg(&reports);
    if let Some(seed) = seed() {
        command.args(["--seed", &seed]);
    }
    run_tool(command).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_answers_as_its_openapi_spec_says() {
    let _alone = crate::one_at_a_time().await;
    let cli = schemathesis();
    // Stack::start raises the rate limit and turns load shedding off.
    let stack = Stack::start().await;
    let mut failed = Vec::new();
    for (service, url) in [
        ("order", &stack.order),
        ("inventory", &stack.inventory),
        ("notification", &stack.notification),
    ] {
        let started = Instant::now();
        let (passed, output) = run_schemathesis(&cli, service, url).await;
        let summary: Vec<&str> = output
            .lines()
            .filter(|l| {
                l.starts_with("Seed:")
                    || l.contains(" generated,")
                    || (l.starts_with('=') && l.contains(" in "))
            })
            .map(|l| l.trim_matches(|c: char| c == '=' || c.is_whitespace()))
            .collect();
        println!(
            "schemathesis on {service}: {} ({:.0?})",
            summary.join("; "),
            started.elapsed()
        );
        if !passed {
            failed.push(format!("==== schemathesis on {service} ====\n{output}"));
        }
    }
    assert!(
        failed.is_empty(),
        "schemathesis found the API answering other than its spec says:\n{}",
        failed.join("\n")
    );
}
