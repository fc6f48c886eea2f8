//! A bad configuration stops the real binary at once with exit code 64
//! (EX_USAGE) and one line on stderr naming the variable.

use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

/// Runs the service binary with only `vars` set and waits for it to exit;
/// one that accepted its configuration would go on to serve, so it is killed
/// after a few seconds and the test fails.
fn run_with(vars: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_notification-service"))
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
            panic!("notification-service accepted {vars:?} and kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn an_smtp_port_that_is_not_a_number_exits_64_naming_smtp_port() {
    let output = run_with(&[("SMTP_PORT", "mail")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("SMTP_PORT=\"mail\""), "{stderr}");
}

#[test]
fn an_smtp_username_without_a_password_exits_64_naming_smtp_password() {
    let output = run_with(&[("SMTP_TLS", "starttls"), ("SMTP_USERNAME", "shop")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("SMTP_PASSWORD=\"\""), "{stderr}");
    assert!(stderr.contains("SMTP_USERNAME"), "{stderr}");
}
