//! The notification service against an SMTP server like a mail provider's
//! submission port: STARTTLS required, then AUTH with a user and password
//! (`smtp/tls_auth_server.py`, aiosmtpd with a self-signed certificate made
//! at test time, hence `SMTP_TLS_INSECURE`).
//!
//! Needs Python with aiosmtpd: `SMTP_TEST_PYTHON` names the interpreter
//! (`scripts/test.sh` installs aiosmtpd into `.run/venv` and sets it), else
//! `.run/venv/bin/python` in the workspace is used.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use e2e_tests::{ADMIN_TOKEN, Stack, eventually};
use serde_json::{Value, json};

const USER: &str = "shop-mailer";
const PASSWORD: &str = "correct horse battery staple";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    let python = std::env::var_os("SMTP_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".run/venv/bin/python"));
    assert!(
        python.is_file(),
        "no Python with aiosmtpd at {}: run ./scripts/test.sh (it installs aiosmtpd into \
         .run/venv), or `pip install aiosmtpd==1.4.6` and set SMTP_TEST_PYTHON to that python",
        python.display()
    );
    python
}

/// The Python SMTP server, stopped when dropped; what it printed, as JSON.
struct SmtpServer {
    child: Child,
    /// Held open: the server stops when it closes, so it cannot outlive a
    /// test process that died without dropping this.
    _stdin: ChildStdin,
    port: u16,
    events: Arc<Mutex<Vec<Value>>>,
}

impl SmtpServer {
    /// Listens on a free port and takes `user` with `password` only.
    fn start(user: &str, password: &str) -> SmtpServer {
        let python = python();
        let mut child = Command::new(&python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp/tls_auth_server.py"))
            .args(["--user", user, "--password", password])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", python.display()));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut stderr = child.stderr.take().unwrap();
        // Drained on threads of their own: a full pipe would stall the server.
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let events = Arc::new(Mutex::new(Vec::new()));
        let (ready, port) = mpsc::channel();
        let recorded = events.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let event: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("the SMTP server printed {line:?}: {e}"));
                if event["event"] == "ready" {
                    let _ = ready.send(event["port"].as_u64().unwrap() as u16);
                } else {
                    recorded.lock().unwrap().push(event);
                }
            }
        });
        let port = match port.recv_timeout(Duration::from_secs(20)) {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                panic!(
                    "the SMTP server did not start ({status}); run ./scripts/test.sh, which \
                     installs aiosmtpd and openssl. Its stderr:\n{}",
                    errors.join().unwrap()
                );
            }
        };
        SmtpServer {
            child,
            _stdin: stdin,
            port,
            events,
        }
    }

    /// What it printed of `kind` ("auth" or "message") so far.
    fn events(&self, kind: &str) -> Vec<Value> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|e| e["event"] == kind)
            .cloned()
            .collect()
    }

    /// The notification service's settings for this server with `password`.
    fn settings(&self, password: &'static str) -> Vec<(&'static str, String)> {
        vec![
            ("SMTP_HOST", "127.0.0.1".into()),
            ("SMTP_PORT", self.port.to_string()),
            ("SMTP_TLS", "starttls".into()),
            ("SMTP_TLS_INSECURE", "true".into()),
            ("SMTP_USERNAME", USER.into()),
            ("SMTP_PASSWORD", password.into()),
        ]
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_stack(settings: &[(&'static str, String)]) -> Stack {
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Stack::start_with(&settings).await
}

/// Records a manual notification to `to` and returns its URL.
async fn send_manual(stack: &Stack, to: &str, subject: &str) -> String {
    let url = format!("{}/api/notifications", stack.notification);
    let accepted = stack
        .http
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "recipient": to, "subject": subject, "body": "Sent over TLS." }))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let id = accepted.json::<Value>().await.unwrap()["notificationId"]
        .as_str()
        .unwrap()
        .to_string();
    format!("{url}/{id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_goes_out_through_starttls_and_auth_and_is_recorded_as_sent() {
    let _alone = crate::one_at_a_time().await;
    let server = SmtpServer::start(USER, PASSWORD);
    let stack = start_stack(&server.settings(PASSWORD)).await;
    let to = stack.email("tls");
    let notification = send_manual(&stack, &to, "Your order over TLS").await;

    let sent = eventually("SENT", || async {
        let n = stack.admin_get_json(&notification).await;
        (n["status"] == "SENT").then_some(n)
    })
    .await;
    assert_eq!(sent["attempts"], 1, "{sent}");
    let messages = server.events("message");
    assert_eq!(messages.len(), 1, "{messages:?}");
    let message = &messages[0];
    assert_eq!(message["subject"], "Your order over TLS", "{message}");
    assert_eq!(message["rcpt_tos"], json!([to]), "{message}");
    assert_eq!(message["tls"], true, "sent after STARTTLS: {message}");
    assert_eq!(message["authenticated"], true, "{message}");
    assert_eq!(message["login"], USER, "{message}");
    let logins = server.events("auth");
    assert!(
        logins
            .iter()
            .all(|l| l["success"] == true && l["tls"] == true),
        "{logins:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_keeps_the_email_pending_with_the_refusal_recorded() {
    let _alone = crate::one_at_a_time().await;
    let server = SmtpServer::start(USER, PASSWORD);
    let stack = start_stack(&server.settings("not the password")).await;
    let to = stack.email("wrong-password");
    let notification = send_manual(&stack, &to, "Never delivered").await;

    let failed = eventually("a recorded SMTP failure", || async {
        let n = stack.admin_get_json(&notification).await;
        n["lastError"].is_string().then_some(n)
    })
    .await;
    assert_eq!(failed["status"], "PENDING", "{failed}");
    let error = failed["lastError"].as_str().unwrap();
    assert!(
        error.contains("authentication refused") && error.contains("535"),
        "{failed}"
    );
    assert!(!error.contains("not the password"), "{failed}");

    // It keeps trying, over TLS, and never gets an email through.
    let logins = eventually("a second login", || async {
        let logins = server.events("auth");
        (logins.len() >= 2).then_some(logins)
    })
    .await;
    assert!(
        logins
            .iter()
            .all(|l| l["success"] == false && l["tls"] == true && l["login"] == USER),
        "{logins:?}"
    );
    let still = stack.admin_get_json(&notification).await;
    assert_eq!(still["status"], "PENDING", "{still}");
    assert_eq!(
        still["attempts"], 0,
        "a refused login uses no attempt: {still}"
    );
    assert_eq!(server.events("message"), Vec::<Value>::new());
}
