//! Clients generated from each service's live spec work: openapi-python-client
//! and openapi-typescript read every spec without a warning, and the
//! README's first order runs through the generated Python clients, which
//! hand back typed models (`OrderView`, not raw JSON).
//!
//! Needs the generators: `OPENAPI_PYTHON_CLIENT` names the
//! openapi-python-client CLI (the `python` beside it runs the clients; else
//! `.run/venv-clients/bin/openapi-python-client`), and `CLIENTS_TEST_DIR` the
//! directory whose `node_modules` holds openapi-typescript (else
//! `tests/clients`). `scripts/test.sh` installs both, pinned, and sets them.
//! The generated code goes under the target directory.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use e2e_tests::{Stack, customer_token, run_tool as run};
use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A tool at the path `variable` names, or at `default` in the workspace.
fn tool(variable: &str, default: &str, install: &str) -> PathBuf {
    let path = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(default));
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh (it installs it), or {install} and set {variable}",
        path.display()
    );
    path
}

/// What a generator printed beyond its own progress lines: its warnings and
/// errors.
fn complaints<'a>(output: &'a str, progress: &[&str]) -> Vec<&'a str> {
    output
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !progress.iter().any(|p| line.contains(p)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_clients_read_every_spec_and_run_the_first_order_with_typed_models() {
    let _alone = crate::one_at_a_time().await;
    let python_generator = tool(
        "OPENAPI_PYTHON_CLIENT",
        ".run/venv-clients/bin/openapi-python-client",
        "`pip install openapi-python-client==0.29.1`",
    );
    let python = python_generator.with_file_name("python");
    let clients_dir = tool(
        "CLIENTS_TEST_DIR",
        "tests/clients",
        "`npm ci` in tests/clients",
    );
    let typescript_generator = clients_dir.join("node_modules/.bin/openapi-typescript");
    assert!(
        typescript_generator.exists(),
        "{} is missing: `npm ci` in {}",
        typescript_generator.display(),
        clients_dir.display()
    );
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("generated_clients");
    let _ = std::fs::remove_dir_all(&out);

    let stack = Stack::start().await;
    let mut python_packages = Vec::new();
    for (service, url) in [
        ("order-service", &stack.order),
        ("inventory-service", &stack.inventory),
        ("notification-service", &stack.notification),
    ] {
        let dir = out.join(service);
        std::fs::create_dir_all(&dir).unwrap();
        let spec_text = stack.get_text(&format!("{url}/openapi.json")).await;
        let spec = dir.join("openapi.json");
        std::fs::write(&spec, &spec_text).unwrap();

        let python_client = dir.join("python");
        let mut command = Command::new(&python_generator);
        command
            .arg("generate")
            .arg("--path")
            .arg(&spec)
            .arg("--config")
            .arg(clients_dir.join("generator.yml"))
            .arg("--output-path")
            .arg(&python_client);
        let (generated, output) = run(command).await;
        assert!(generated, "openapi-python-client on {service}:\n{output}");
        let warnings = complaints(&output, &["Generating "]);
        assert!(
            warnings.is_empty(),
            "openapi-python-client on {service} warned:\n{output}"
        );
        python_packages.push(python_client);

        let types = dir.join("types.d.ts");
        let mut command = Command::new(&typescript_generator);
        command.arg(&spec).arg("-o").arg(&types);
        let (generated, output) = run(command).await;
        assert!(generated, "openapi-typescript on {service}:\n{output}");
        let warnings = complaints(&output, &["openapi-typescript ", " → "]);
        assert!(
            warnings.is_empty(),
            "openapi-typescript on {service} warned:\n{output}"
        );
        let declared = std::fs::read_to_string(&types).unwrap();
        assert!(declared.contains("schemas: {"), "{declared}");
    }
    let order_types = std::fs::read_to_string(out.join("order-service/types.d.ts")).unwrap();
    assert!(order_types.contains("OrderView: {"), "{order_types}");

    // The README's first order, through the generated Python clients.
    let product = stack.create_product(10, 0, 4.5).await;
    let email = stack.email("generated-client");
    let mut command = Command::new(&python);
    command
        .arg(clients_dir.join("first_order.py"))
        .args([&stack.order, &stack.inventory])
        .arg(customer_token("c1"))
        .args([&product, &email])
        .env(
            "PYTHONPATH",
            std::env::join_paths(&python_packages).unwrap(),
        );
    let (ran, output) = run(command).await;
    assert!(
        ran,
        "the first order through the generated client:\n{output}"
    );
    let read: Value = serde_json::from_str(output.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {output}"));
    assert_eq!(read["productClass"], "ProductView", "{read}");
    assert_eq!(read["placedStatus"], 202, "{read}");
    assert_eq!(read["placedClass"], "OrderView", "{read}");
    assert_eq!(read["orderClass"], "OrderView", "{read}");
    assert_eq!(read["statusClass"], "OrderStatus", "{read}");
    assert_eq!(read["status"], "CONFIRMED", "{read}");
    assert_eq!(read["totalAmount"], 9.0, "{read}");
    assert_eq!(read["lines"][0]["unitPrice"], 4.5, "{read}");

    // What the client read is the order as the API has it.
    let order = stack.order(read["orderId"].as_str().unwrap()).await;
    assert_eq!(order["status"], "CONFIRMED");
    assert_eq!(order["customerEmail"], email.as_str());
}
