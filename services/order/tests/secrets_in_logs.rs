//! No secret reaches the log: the real binary, started with known secrets
//! and every log line on (`RUST_LOG=debug`), prints none of them while it
//! starts, connects and fails to connect. Needs the local MongoDB
//! (`MONGODB_URI`, default 127.0.0.1:27017), as `./scripts/test.sh` runs it.

use std::{
    io::Read,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

const ADMIN_TOKEN: &str = "admin-token-that-must-never-be-logged-0001";
const JWT_SECRET: &str = "jwt-secret-that-must-never-be-logged-00002";
const BROKER_PASSWORD: &str = "broker-password-never-logged-0003";
const DATABASE_PASSWORD: &str = "database-password-never-logged-0004";

/// The service's stdout and stderr so far, while it runs.
struct Service {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Service {
    fn start(vars: &[(&str, &str)]) -> Service {
        let mut child = Command::new(env!("CARGO_BIN_EXE_order-service"))
            .env_clear()
            .env("PORT", "0")
            .env("RUST_LOG", "debug")
            .env("ADMIN_TOKEN", ADMIN_TOKEN)
            .env("JWT_SECRET", JWT_SECRET)
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the service binary starts");
        let output = Arc::new(Mutex::new(String::new()));
        for mut stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut buffer = [0; 8192];
                while let Ok(n @ 1..) = stream.read(&mut buffer) {
                    output
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buffer[..n]));
                }
            });
        }
        Service { child, output }
    }

    /// Waits until the log holds every one of `lines`, and returns the log.
    fn log_once_it_shows(&self, lines: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = self.output.lock().unwrap().clone();
            if lines.iter().all(|line| output.contains(line)) {
                return output;
            }
            assert!(
                Instant::now() < deadline,
                "the log never showed {lines:?}:\n{output}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_no_secret(log: &str) {
    for secret in [ADMIN_TOKEN, JWT_SECRET, BROKER_PASSWORD, DATABASE_PASSWORD] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
}

#[test]
fn a_serving_service_whose_broker_refuses_its_login_logs_no_secret() {
    let mongodb = std::env::var("MONGODB_URI").unwrap_or("mongodb://127.0.0.1:27017".into());
    let database = format!("t_{}_secrets", uuid::Uuid::new_v4().simple());
    let broker = format!("amqp://app:{BROKER_PASSWORD}@127.0.0.1:5672/%2f");
    let service = Service::start(&[
        ("MONGODB_URI", &mongodb),
        ("MONGODB_DATABASE", &database),
        ("RABBITMQ_URL", &broker),
    ]);
    // Up, saying which tokens it takes, and refused by the broker.
    let log =
        service.log_once_it_shows(&["listening", "customer routes take JWTs", "ACCESS_REFUSED"]);
    assert_no_secret(&log);
}

#[test]
fn a_database_uri_with_a_password_is_logged_without_it() {
    let uri =
        format!("mongodb://app:{DATABASE_PASSWORD}@127.0.0.1:1/?serverSelectionTimeoutMS=200");
    let service = Service::start(&[("MONGODB_URI", &uri)]);
    let log = service.log_once_it_shows(&["is not answering yet"]);
    assert!(log.contains("mongodb://app:***@127.0.0.1:1/"), "{log}");
    assert_no_secret(&log);
}
