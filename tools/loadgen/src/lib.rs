//! The load generator: creates the products it needs, drives
//! `POST /api/orders` in stages (open loop at a fixed arrival rate, or
//! closed loop with N clients), follows every order to CONFIRMED or REJECTED
//! by listening to the order events on RabbitMQ (no polling load on the
//! services), and reports throughput and latency percentiles as a progress
//! line, a JSON result, a PNG plot and a markdown summary.

mod dbtop;
mod follow;
mod plot;
mod procs;
mod report;

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use serde_json::json;

use report::OrderRecord;
pub use report::{Percentiles, Report, StageReport};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A fixed arrival rate: late answers do not slow the arrivals, so
    /// queueing delay shows in the latencies.
    Open,
    /// N clients, each sending its next order when the last one answered.
    Closed,
}

#[derive(Clone, Debug, Parser)]
#[command(about = "Order load generator")]
pub struct Args {
    #[arg(long, env = "ORDER_URL", default_value = "http://127.0.0.1:3001")]
    pub order_url: String,
    #[arg(long, env = "INVENTORY_URL", default_value = "http://127.0.0.1:3002")]
    pub inventory_url: String,
    #[arg(
        long,
        env = "RABBITMQ_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub rabbitmq_url: String,
    /// The services' AMQP_NAMESPACE.
    #[arg(long, env = "AMQP_NAMESPACE", default_value = "")]
    pub namespace: String,
    #[arg(long, env = "ADMIN_TOKEN", default_value = "dev-admin-token")]
    pub admin_token: String,
    /// The services' JWT_SECRET: each order goes with its customer's own
    /// token, as in production. Without it, orders carry the admin token.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    #[arg(long, value_enum, default_value = "open")]
    pub mode: Mode,
    /// Stages as RATExSECONDS (open) or CLIENTSxSECONDS (closed), run in
    /// order, e.g. `1000x30,1700x60`.
    #[arg(long, default_value = "1000x10")]
    pub stages: String,
    /// Before the stages, on a stack still idle, raise the rate by
    /// `ramp_step` every `ramp_seconds` from `ramp_start` until end-to-end
    /// p99 passes `p99_target_ms` (open loop only). First, because a fixed
    /// stage past capacity leaves a backlog that would spoil every step.
    #[arg(long)]
    pub ramp: bool,
    #[arg(long, default_value_t = 50)]
    pub ramp_start: u32,
    #[arg(long, default_value_t = 50)]
    pub ramp_step: u32,
    #[arg(long, default_value_t = 10)]
    pub ramp_seconds: u64,
    #[arg(long, default_value_t = 4000)]
    pub ramp_max: u32,
    #[arg(long, default_value_t = 100.0)]
    pub p99_target_ms: f64,
    /// Runs of every stage and ramp step, one after another: the summary
    /// gives each load's median and spread (the machine's run-to-run noise
    /// is larger than many changes worth measuring), and the ramp goes on
    /// while a step's median p99 is under the target.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
    /// How long to wait for stragglers after a stage, and for emails after
    /// the last one.
    #[arg(long, default_value_t = 60)]
    pub drain_seconds: u64,
    /// Products the orders spread over.
    #[arg(long, default_value_t = 20)]
    pub products: usize,
    /// With `--db-prefix`: read the server's per-collection counters around
    /// every stage (the databases whose names start with the prefix).
    #[arg(long, env = "MONGODB_URI", default_value = "mongodb://127.0.0.1:27017")]
    pub mongodb_uri: String,
    #[arg(long)]
    pub db_prefix: Option<String>,
    /// Processes to account CPU and memory to, as NAME=PID (repeatable).
    #[arg(long = "watch")]
    pub watch: Vec<String>,
    /// Directory for result.json, plot.png and summary.md.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One stage to run.
#[derive(Clone, Copy, Debug)]
struct Stage {
    /// Orders per second (open) or clients (closed).
    load: u32,
    seconds: u64,
    ramp: bool,
}

fn parse_stages(text: &str) -> anyhow::Result<Vec<Stage>> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let (load, seconds) = s
                .trim()
                .split_once('x')
                .with_context(|| format!("stage {s:?} is not LOADxSECONDS"))?;
            Ok(Stage {
                load: load.parse().with_context(|| format!("stage {s:?}"))?,
                seconds: seconds.parse().with_context(|| format!("stage {s:?}"))?,
                ramp: false,
            })
        })
        .collect()
}

/// Customers the orders spread over: enough that none passes the services'
/// ORDERS_PER_CUSTOMER_PER_MINUTE (30) below 10,000 orders/s.
const CUSTOMERS: usize = 20_000;

/// A customer's bearer token: HS256 with the services' `JWT_SECRET`, `sub`
/// the customer id, valid for `ttl`.
pub fn customer_token(secret: &str, customer: &str, ttl: Duration) -> String {
    let claims = json!({
        "sub": customer,
        "exp": chrono::Utc::now().timestamp() + ttl.as_secs() as i64,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing does not fail")
}

/// What every request task shares.
struct Shared {
    http: reqwest::Client,
    url: String,
    /// The bearer token of customer `load-<i>`, or the admin token for all.
    tokens: Vec<String>,
    products: Vec<String>,
    records: Mutex<Vec<OrderRecord>>,
    sent: AtomicU64,
    accepted: AtomicU64,
    errors: AtomicU64,
    epoch: Instant,
}

impl Shared {
    /// One order; `intended` is when it should have been sent (open loop),
    /// so time spent waiting for a free connection counts.
    async fn order(&self, intended: Instant, stage: usize) {
        let n = self.sent.fetch_add(1, Ordering::Relaxed) as usize;
        let product = &self.products[n % self.products.len()];
        let customer = n % CUSTOMERS;
        let body = json!({
            "customerId": format!("load-{customer}"),
            "customerEmail": format!("load-{customer}@example.com"),
            "items": [{ "productId": product, "quantity": 1 }],
        });
        let token = &self.tokens[customer % self.tokens.len()];
        let result = self
            .http
            .post(&self.url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await;
        let answered = Instant::now();
        let order_id = match result {
            Ok(response) if response.status().as_u16() == 202 => response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|b| b["orderId"].as_str().map(str::to_string)),
            _ => None,
        };
        match &order_id {
            Some(_) => self.accepted.fetch_add(1, Ordering::Relaxed),
            None => self.errors.fetch_add(1, Ordering::Relaxed),
        };
        self.records.lock().expect("poisoned").push(OrderRecord {
            stage,
            order_id,
            sent_at: intended.duration_since(self.epoch),
            post_latency: answered.duration_since(intended),
        });
    }
}

pub async fn run(args: Args) -> anyhow::Result<Report> {
    let stages = parse_stages(&args.stages)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .timeout(Duration::from_secs(10))
        .build()?;
    let products = create_products(&http, &args).await?;
    let follower = follow::Follower::start(&args.rabbitmq_url, &args.namespace).await?;
    let mut watched = procs::Watched::parse(&args.watch)?;
    let db = match &args.db_prefix {
        Some(prefix) => Some(dbtop::DbProbe::connect(&args.mongodb_uri, prefix).await?),
        None => None,
    };

    let shared = Arc::new(Shared {
        http,
        url: format!("{}/api/orders", args.order_url.trim_end_matches('/')),
        tokens: match &args.jwt_secret {
            // Long enough for any run; minted up front, off the clock.
            Some(secret) => (0..CUSTOMERS)
                .map(|c| customer_token(secret, &format!("load-{c}"), Duration::from_secs(86_400)))
                .collect(),
            None => vec![args.admin_token.clone()],
        },
        products,
        records: Mutex::new(Vec::new()),
        sent: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        epoch: follower.epoch(),
    });

    // The ramp (open loop only), which stops at the first step over the
    // target, then the fixed stages.
    let ramp = (args.ramp && args.mode == Mode::Open)
        .then(|| {
            (0..)
                .map(|step| args.ramp_start + step * args.ramp_step)
                .take_while(|load| *load <= args.ramp_max)
                .map(|load| Stage {
                    load,
                    seconds: args.ramp_seconds,
                    ramp: true,
                })
        })
        .into_iter()
        .flatten();
    let mut reports: Vec<StageReport> = Vec::new();
    let mut ramp_over = false;
    for stage in ramp.chain(stages) {
        if stage.ramp && ramp_over {
            continue;
        }
        for repeat in 0..args.repeats {
            let report = run_stage(
                &args,
                &shared,
                &follower,
                &mut watched,
                db.as_ref(),
                stage,
                repeat,
                reports.len(),
            )
            .await;
            println!("\n{}", report.one_line());
            reports.push(report);
        }
        if stage.ramp {
            // This step's runs are the last ones.
            let runs = &reports[reports.len() - args.repeats as usize..];
            let step = &report::StageSummary::group(runs)[0];
            ramp_over = !step.kept_up(args.p99_target_ms);
        }
    }

    let load_stopped = shared.epoch.elapsed();
    let accepted = shared.accepted.load(Ordering::Relaxed);
    let drain = follower
        .wait_for_notifications(accepted, Duration::from_secs(args.drain_seconds))
        .await
        .map(|at| at.saturating_sub(load_stopped));
    let report = Report::build(
        &args,
        reports,
        drain,
        follower.notifications_sent(),
        watched.resident(),
        &shared.records.lock().expect("poisoned"),
        &follower.outcomes(),
    );
    report.print();
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("result.json"), serde_json::to_vec_pretty(&report)?)?;
        std::fs::write(out.join("summary.md"), report.markdown())?;
        match plot::draw(&report, &out.join("plot.png")) {
            Ok(()) => {}
            Err(error) => eprintln!("loadgen: no plot: {error:#}"),
        }
        println!("loadgen: results in {}", out.display());
    }
    Ok(report)
}

/// One run of a stage: its orders, their outcomes (waiting up to the drain
/// time for stragglers), and what the watched processes and the database
/// did meanwhile.
#[allow(clippy::too_many_arguments)]
async fn run_stage(
    args: &Args,
    shared: &Arc<Shared>,
    follower: &follow::Follower,
    watched: &mut procs::Watched,
    db: Option<&dbtop::DbProbe>,
    stage: Stage,
    repeat: u32,
    index: usize,
) -> StageReport {
    let usage_before = watched.sample();
    let machine_before = procs::machine();
    let db_before = db_snapshot(db).await;
    let started = shared.epoch.elapsed();
    drive(shared, args.mode, stage, index).await;
    let load_ended = shared.epoch.elapsed();
    // Every request task of the stage has been joined: its records are final.
    let records: Vec<OrderRecord> = shared
        .records
        .lock()
        .expect("poisoned")
        .iter()
        .filter(|r| r.stage == index)
        .cloned()
        .collect();
    let ids: Vec<String> = records.iter().filter_map(|r| r.order_id.clone()).collect();
    wait_for_outcomes(follower, &ids, args.drain_seconds).await;
    let usage_after = watched.sample();
    let machine_after = procs::machine();
    let db_after = db_snapshot(db).await;
    let mut report = StageReport::build(
        index,
        args.mode,
        stage.load,
        stage.seconds,
        stage.ramp,
        repeat,
        started,
        load_ended,
        &records,
        &follower.outcomes(),
        procs::usage(&usage_before, &usage_after),
    );
    if let (Some(before), Some(after)) = (&db_before, &db_after) {
        report.db = Some(dbtop::profile(before, after, report.finished));
    }
    if let (Some(before), Some(after)) = (machine_before, machine_after) {
        report.machine = Some(procs::MachineUsage::between(before, after, &report.usage));
    }
    report
}

/// The database counters, or `None` (with a warning) if the server will
/// not give them: the run goes on without the database profile.
async fn db_snapshot(db: Option<&dbtop::DbProbe>) -> Option<dbtop::Snapshot> {
    match db?.snapshot().await {
        Ok(snapshot) => Some(snapshot),
        Err(error) => {
            eprintln!("loadgen: no database profile for this stage: {error:#}");
            None
        }
    }
}

/// Sends one stage's orders, printing a progress line every second.
async fn drive(shared: &Arc<Shared>, mode: Mode, stage: Stage, index: usize) {
    let deadline = Instant::now() + Duration::from_secs(stage.seconds);
    let progress = tokio::spawn(progress_line(shared.clone(), stage, deadline));
    let mut tasks = tokio::task::JoinSet::new();
    match mode {
        Mode::Open => {
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(stage.load.max(1))));
            // A late tick fires at once, so the arrival rate holds.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                let intended = tick.tick().await.into_std();
                if intended >= deadline {
                    break;
                }
                let shared = shared.clone();
                tasks.spawn(async move { shared.order(intended, index).await });
                // Reap finished tasks so the set stays small.
                while tasks.try_join_next().is_some() {}
            }
        }
        Mode::Closed => {
            for _ in 0..stage.load {
                let shared = shared.clone();
                tasks.spawn(async move {
                    while Instant::now() < deadline {
                        shared.order(Instant::now(), index).await;
                    }
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    progress.abort();
}

async fn progress_line(shared: Arc<Shared>, stage: Stage, deadline: Instant) {
    // The counters run on across stages: each line shows this stage's rate.
    let mut last = (
        shared.sent.load(Ordering::Relaxed),
        shared.accepted.load(Ordering::Relaxed),
    );
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let sent = shared.sent.load(Ordering::Relaxed);
        let accepted = shared.accepted.load(Ordering::Relaxed);
        let left = deadline.saturating_duration_since(Instant::now()).as_secs();
        eprint!(
            "\r  load {:>5}  sent {:>7} (+{:>5}/s)  accepted {:>7} (+{:>5}/s)  errors {:>4}  {:>3}s left   ",
            stage.load,
            sent,
            sent - last.0,
            accepted,
            accepted - last.1,
            shared.errors.load(Ordering::Relaxed),
            left
        );
        last = (sent, accepted);
    }
}

/// Waits until every order in `ids` has an outcome, or the drain time
/// passed (the stage's report counts those left unfinished).
async fn wait_for_outcomes(follower: &follow::Follower, ids: &[String], drain_seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(drain_seconds);
    loop {
        if follower.missing(ids) == 0 || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Products with stock for any run, in a category of their own.
async fn create_products(http: &reqwest::Client, args: &Args) -> anyhow::Result<Vec<String>> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut ids = Vec::new();
    for n in 0..args.products {
        let response = http
            .post(format!(
                "{}/api/products",
                args.inventory_url.trim_end_matches('/')
            ))
            .bearer_auth(&args.admin_token)
            .json(&json!({
                "sku": format!("LOAD-{}-{n}", &run[..8]),
                "name": format!("Load product {n}"),
                "category": "loadgen",
                "price": 1.25,
                "stock": 1_000_000_000,
                "lowStockThreshold": 0,
            }))
            .send()
            .await
            .with_context(|| format!("inventory at {} is not answering", args.inventory_url))?;
        anyhow::ensure!(
            response.status().as_u16() == 201,
            "creating a product: HTTP {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        let body: serde_json::Value = response.json().await?;
        ids.push(body["productId"].as_str().context("productId")?.to_string());
    }
    Ok(ids)
}
