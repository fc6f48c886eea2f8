//! What each service's own `tests/bad_config.rs` runs: its real binary,
//! with one bad setting.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Runs `binary` with only `vars` set, checks that it stopped at once with
/// exit code 64 (EX_USAGE) and one line on stderr, and returns that line.
/// A binary that accepted its configuration would go on to serve: it is
/// killed after 10 s and the test fails.
pub fn refused_configuration(binary: &str, vars: &[(&str, &str)]) -> String {
    let mut child = Command::new(binary)
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the service binary starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{binary} accepted {vars:?} and kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(64), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}
