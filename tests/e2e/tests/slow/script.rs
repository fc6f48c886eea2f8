//! What the tests that run `./scripts/run.sh` share: the script started as
//! a user starts it, and the requests they make through it.

use std::{
    fs,
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU16, Ordering},
    time::{Duration, Instant},
};

use e2e_tests::{
    ADMIN_TOKEN, JWT_SECRET,
    broker_users::{BrokerUsers, management_url},
    customer_token, eventually_within,
};
use serde_json::{Value, json};
use shared::registry;

/// run.sh builds the services before it starts them: seconds when cargo
/// test has left the dependencies compiled, minutes in a cold target
/// directory.
pub const STARTUP_LIMIT: Duration = Duration::from_secs(900);
/// What else cargo sets for a test besides `CARGO_PKG_*` and
/// `CARGO_MANIFEST_*`.
pub const CARGO_TEST_VARIABLES: [&str; 5] = [
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
];

/// `./scripts/run.sh` in a process group of its own, so that the test can
/// signal it and everything it started, as a terminal's Ctrl-C does. Dropped,
/// it kills the group: a failed test leaves nothing running, and prints the
/// script's output.
pub struct RunScript {
    child: Child,
    dir: PathBuf,
    /// The broker users run.sh makes for the test's namespace, deleted
    /// after the script is stopped (fields drop after `drop`).
    _broker_users: BrokerUsers,
}

impl RunScript {
    pub fn start(id: &str, ports: &Ports) -> RunScript {
        Self::start_with(id, ports, &[])
    }

    /// run.sh with `extra` variables set as well.
    pub fn start_with(id: &str, ports: &Ports, extra: &[(&str, String)]) -> RunScript {
        let secrets = [
            ("ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
            ("JWT_SECRET", JWT_SECRET.to_string()),
        ];
        Self::spawn(id, ports, &[&secrets[..], extra].concat())
    }

    /// run.sh as a new user starts it, with no ADMIN_TOKEN or JWT_SECRET:
    /// it makes its own.
    pub fn start_without_secrets(id: &str, ports: &Ports) -> RunScript {
        Self::spawn(id, ports, &[])
    }

    fn spawn(id: &str, ports: &Ports, extra: &[(&str, String)]) -> RunScript {
        let (target_dir, profile) = build_location();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("run-script-{id}"));
        fs::create_dir_all(&dir).unwrap();
        let output = fs::File::create(dir.join("output")).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/run.sh");
        // As from a terminal, where Ctrl-C is live. A test run started as a
        // background job of a non-interactive shell inherits SIGINT ignored,
        // and bash can neither trap nor reset a signal ignored on entry, so
        // the script would never see the Ctrl-C this test sends.
        let mut command = Command::new("env");
        command.args(["--default-signal=INT", script]);
        // Cargo sets these for this test. Seen by the cargo in run.sh, they
        // would count as a changed environment for the build scripts that
        // read them (ring's), so each build would redo the other's work.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_MANIFEST_")
                || CARGO_TEST_VARIABLES.contains(&&*name)
            {
                command.env_remove(&*name);
            }
        }
        let child = command
            .envs(ports.variables())
            .env("BUILD_PROFILE", profile)
            .env("CARGO_TARGET_DIR", target_dir)
            .env("RUN_DIR", dir.join("run"))
            .env("MONGODB_DATABASE_PREFIX", format!("t_{id}_"))
            .env("AMQP_NAMESPACE", format!("t-{id}."))
            // The broker deletes this test's queues 15 minutes after it ends.
            .env("AMQP_QUEUE_EXPIRES_MS", "900000")
            .env_remove("ADMIN_TOKEN")
            .env_remove("JWT_SECRET")
            .env("ADMIN_EMAIL", format!("admin-{id}@example.com"))
            .env_remove("MONGODB_DATABASE")
            .envs(extra.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .process_group(0)
            .spawn()
            .expect("scripts/run.sh starts");
        RunScript {
            child,
            dir,
            _broker_users: BrokerUsers::made_elsewhere(&management_url(), &format!("t-{id}.")),
        }
    }

    /// What run.sh printed so far, stdout and stderr together.
    pub fn output(&self) -> String {
        fs::read_to_string(self.dir.join("output")).unwrap_or_default()
    }

    /// The script's RUN_DIR.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// What `scripts/token.sh ARG` prints for this run directory.
    pub fn token(&self, arg: &str) -> String {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/token.sh");
        let output = Command::new(script)
            .arg(arg)
            .env("RUN_DIR", self.run_dir())
            .env_remove("ADMIN_TOKEN")
            .env_remove("JWT_SECRET")
            .output()
            .expect("scripts/token.sh runs");
        assert!(output.status.success(), "token.sh {arg}: {output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    /// The pid run.sh recorded for the service's current process.
    pub fn pid(&self, service: &str) -> Option<u32> {
        self.instance_pid(&format!("{service}-service"))
    }

    /// The pid run.sh recorded for an instance (`order-service-2`).
    pub fn instance_pid(&self, label: &str) -> Option<u32> {
        let file = self.dir.join(format!("run/{label}.pid"));
        fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// Waits until every service on `ports` is ready.
    pub async fn wait_until_ready(&mut self, http: &reqwest::Client, ports: &Ports) {
        let urls: Vec<String> = ports.iter().map(|(name, _)| ports.url(name)).collect();
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("run.sh exited with {status} before the services were ready");
            }
            let mut all = true;
            for url in &urls {
                all &= ready(http, url).await;
            }
            if all {
                return;
            }
            assert!(Instant::now() < deadline, "services not ready in time");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// SIGINT to the whole group, as Ctrl-C in a terminal sends it; waits
    /// for run.sh to exit.
    pub async fn interrupt(&mut self) -> ExitStatus {
        assert!(signal(&format!("-{}", self.child.id()), "INT"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "run.sh still runs 60s after SIGINT"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for RunScript {
    fn drop(&mut self) {
        // The whole group, even if run.sh itself has exited: what it
        // started must not outlive the test.
        signal(&format!("-{}", self.child.id()), "KILL");
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- output of scripts/run.sh (logs in {}) ----\n{}",
                self.dir.join("run/logs").display(),
                self.output()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A client for the script's stack.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GET `url` with `token`; the JSON body, or `None` if there was none.
pub async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> Option<Value> {
    http.get(url)
        .bearer_auth(token)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Where `cargo test` built this test: run.sh builds the services there,
/// with the same profile, so that the dependencies are already compiled.
pub fn build_location() -> (PathBuf, String) {
    // <target>/<profile>/deps/run_script-<hash>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let profile = profile_dir.file_name().unwrap().to_string_lossy().into();
    (profile_dir.parent().unwrap().to_path_buf(), profile)
}

pub async fn ready(http: &reqwest::Client, url: &str) -> bool {
    match http.get(format!("{url}/ready")).send().await {
        Ok(response) => response.status() == 200,
        Err(_) => false,
    }
}

/// A POST of one unit of `product` for this test's customer.
pub fn order_request(
    http: &reqwest::Client,
    order: &str,
    id: &str,
    product: &str,
) -> reqwest::RequestBuilder {
    http.post(format!("{order}/api/orders"))
        .bearer_auth(customer_token(&format!("c-{id}")))
        .json(&json!({
            "customerId": format!("c-{id}"),
            "customerEmail": format!("c-{id}@example.com"),
            "items": [{ "productId": product, "quantity": 1 }],
        }))
}

pub async fn place_order(http: &reqwest::Client, order: &str, id: &str, product: &str) -> String {
    let response = order_request(http, order, id, product)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let order: Value = response.json().await.unwrap();
    order["orderId"].as_str().unwrap().to_string()
}

/// Places an order as a careful client does behind a proxy: with an
/// Idempotency-Key, retrying after a 503 (nginx's answer when the instance
/// it had sent the request to died) until it is accepted.
pub async fn place_order_retrying(
    http: &reqwest::Client,
    order: &str,
    id: &str,
    product: &str,
    key: &str,
) -> String {
    for _ in 0..5 {
        let response = order_request(http, order, id, product)
            .header("idempotency-key", key)
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            202 | 200 => {
                let order: Value = response.json().await.unwrap();
                return order["orderId"].as_str().unwrap().to_string();
            }
            503 => {
                assert_eq!(response.headers()["retry-after"], "1");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => panic!(
                "POST /api/orders answered {other}: {}",
                response.text().await.unwrap()
            ),
        }
    }
    panic!("order {key} still refused after 5 tries")
}

/// The order's status once it has left PENDING.
pub async fn final_status(http: &reqwest::Client, order: &str, id: &str) -> String {
    eventually_within(
        &format!("order {id} decided"),
        Duration::from_secs(60),
        || async {
            let order = get_json(http, &format!("{order}/api/orders/{id}"), ADMIN_TOKEN).await?;
            let status = order["status"].as_str()?;
            (status != "PENDING").then(|| status.to_string())
        },
    )
    .await
}

/// `kill -SIGNAL TARGET`: a pid, or minus a process group id. False if
/// nothing got it.
pub fn signal(target: &str, signal: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{signal}"), "--", target])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A base for run.sh's INSTANCE_PORT_BASE: the ten ports above it for each
/// service (base+1 to base+29 for three) are free now, and no other test of
/// this process was given it (two tests asking at once would otherwise both
/// find the same range free before either listens there). Below Linux's
/// ephemeral range (32768 and up), where [`free_ports`] and every outgoing
/// connection take theirs: a port picked there for one test's service could
/// otherwise fall among another test's instances.
pub fn free_instance_base() -> u16 {
    static NEXT_HUNDRED: AtomicU16 = AtomicU16::new(200);
    let span = 10 * registry::all().len() as u16;
    std::iter::from_fn(|| Some(NEXT_HUNDRED.fetch_add(1, Ordering::Relaxed)))
        .take_while(|hundreds| *hundreds < 320)
        .map(|hundreds| hundreds * 100)
        .find(|base| (1..span).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
        .expect("a free range of ports between 20000 and 32000")
}

/// A port for each service of services/registry.txt, by name: where run.sh
/// runs it (or nginx in front of its instances).
#[derive(Clone, Debug)]
pub struct Ports(Vec<(&'static str, u16)>);

impl Ports {
    /// Each service's port and name, in the registry's order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u16)> + '_ {
        self.0.iter().copied()
    }

    pub fn port(&self, name: &str) -> u16 {
        self.iter()
            .find(|(service, _)| *service == name)
            .unwrap_or_else(|| panic!("no service {name:?} in services/registry.txt"))
            .1
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}", self.port(name))
    }

    /// The URLs of the services named, for a test that uses those.
    pub fn urls<const N: usize>(&self, names: [&str; N]) -> [String; N] {
        names.map(|name| self.url(name))
    }

    /// run.sh's variables for them: ORDER_PORT=..., one per service.
    fn variables(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(name, port)| (format!("{}_PORT", name.to_uppercase()), port.to_string()))
            .collect()
    }
}

/// A port nothing listens on now for each service of the registry.
pub fn free_ports() -> Ports {
    let listeners: Vec<(&'static str, TcpListener)> = registry::all()
        .iter()
        .map(|service| (&*service.name, TcpListener::bind("127.0.0.1:0").unwrap()))
        .collect();
    Ports(
        listeners
            .iter()
            .map(|(name, listener)| (*name, listener.local_addr().unwrap().port()))
            .collect(),
    )
}

pub fn port_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

pub fn env_port(name: &str, default: u16) -> u16 {
    std::env::var(name)
        .ok()
        .and_then(|port| port.parse().ok())
        .unwrap_or(default)
}
