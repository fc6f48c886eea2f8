//! The CI smoke run of the load generator: a few seconds of load against
//! the real services, every order followed to its final state. The speed
//! targets live in ./scripts/bench.sh, not here.

use std::time::Duration;

use clap::Parser;
use e2e_tests::{ADMIN_TOKEN, Stack, rabbitmq_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_open_loop_run_finishes_every_order_and_writes_its_results() {
    let stack = Stack::start().await;
    let out = std::env::temp_dir().join(format!("loadgen-smoke-{}", stack.id));
    let args = loadgen::Args::parse_from([
        "loadgen",
        "--order-url",
        &stack.order,
        "--inventory-url",
        &stack.inventory,
        "--rabbitmq-url",
        &rabbitmq_url(),
        "--namespace",
        &format!("t-{}.", stack.id),
        "--admin-token",
        ADMIN_TOKEN,
        "--stages",
        "50x2",
        "--repeats",
        "2",
        // The stack runs in this process.
        "--watch",
        &format!("stack={}", std::process::id()),
        "--products",
        "3",
        "--drain-seconds",
        "20",
        "--out",
        out.to_str().unwrap(),
    ]);
    // Two runs of two seconds and at most 20 of drain each: a run still
    // going after two minutes is stuck, and says so rather than hang the suite.
    let report = tokio::time::timeout(Duration::from_secs(120), loadgen::run(args))
        .await
        .expect("the loadgen run ended within 120 s")
        .unwrap();
    assert_eq!(report.stages.len(), 2, "one stage, run twice");
    for stage in &report.stages {
        assert!(stage.accepted >= 60, "{}", stage.one_line());
        assert_eq!(
            (stage.errors, stage.unfinished),
            (0, 0),
            "{}",
            stage.one_line()
        );
        assert_eq!(stage.finished, stage.accepted);
        assert!(stage.end_to_end.p99_ms > 0.0);
        // The stack did work for its orders, and was woken for them.
        assert!(stage.cpu_ms_per_order_total() > 0.0, "{}", stage.one_line());
        assert!(
            stage.switches_per_order_total() > 0.0,
            "{}",
            stage.one_line()
        );
        // The machine was busy, and not only with this process: the
        // broker and the database it talks to are watched by nobody here.
        let machine = stage
            .machine
            .expect("the machine's CPU read from /proc/stat");
        assert!(
            machine.busy_cores > 0.0 && machine.outside_cores > 0.0,
            "{}",
            stage.one_line()
        );
    }
    assert!(report.clean());
    assert_eq!(report.summary.len(), 1);
    assert_eq!(report.summary[0].runs, vec![0, 1]);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("result.json")).unwrap()).unwrap();
    assert_eq!(json["stages"][1]["finished"], report.stages[1].finished);
    assert_eq!(json["summary"][0]["runs"], serde_json::json!([0, 1]));
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    for section in [
        "| stage |",
        "Each load's runs",
        "Where an order's CPU goes",
        "Machine cores:",
    ] {
        assert!(summary.contains(section), "no {section:?} in:\n{summary}");
    }
    let _ = std::fs::remove_dir_all(out);
}
