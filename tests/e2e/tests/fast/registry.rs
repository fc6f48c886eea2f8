//! The files derived from services/registry.txt agree with it: the
//! workspace has each service's crate and no service crate the registry
//! lacks, each service configures itself from its own line, and the
//! committed nginx/prod.conf is what nginx/render.sh makes of the registry.
//! (The scripts and nginx.conf.template read the registry when they run;
//! deploy/ and the monitoring files are checked against it by
//! scripts/check-deploy.sh and scripts/check-monitoring.sh.)

use std::{collections::BTreeSet, path::Path, process::Command};

use shared::{config::Env, registry};

fn repository() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn the_workspace_has_a_crate_for_each_service_of_the_registry_and_no_other() {
    let root = repository();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let mut folders = BTreeSet::new();
    for entry in std::fs::read_dir(root.join("services")).unwrap() {
        let path = entry.unwrap().path();
        if path.join("Cargo.toml").exists() {
            folders.insert(path.file_name().unwrap().to_string_lossy().to_string());
        }
    }
    let registered: BTreeSet<String> = registry::all().iter().map(|s| s.name.clone()).collect();
    assert_eq!(
        folders, registered,
        "services/*/Cargo.toml against services/registry.txt"
    );
    for service in registry::all() {
        let member = format!("\"services/{}\"", service.name);
        assert!(
            manifest.contains(&member),
            "Cargo.toml's workspace lacks {member}"
        );
        let crate_manifest =
            std::fs::read_to_string(root.join("services").join(&service.name).join("Cargo.toml"))
                .unwrap();
        let package = format!("name = \"{}\"", service.service);
        assert!(
            crate_manifest.contains(&package),
            "services/{}/Cargo.toml: the package must be {package}",
            service.name
        );
    }
}

#[test]
fn each_service_takes_its_name_port_and_database_from_its_line() {
    let empty = Env::from_lookup(|_| None);
    let configured = [
        (
            "order",
            order_service::Config::from_lookup(&empty).unwrap().common,
        ),
        (
            "inventory",
            inventory_service::Config::from_lookup(&empty)
                .unwrap()
                .common,
        ),
        (
            "notification",
            notification_service::Config::from_lookup(&empty)
                .unwrap()
                .common,
        ),
    ];
    assert_eq!(
        configured.len(),
        registry::all().len(),
        "a service of the registry is not checked here"
    );
    for (name, common) in configured {
        let line = registry::service(name);
        assert_eq!(
            (common.service, common.port, common.database.as_str()),
            (line.service.as_str(), line.port, line.database.as_str()),
        );
    }
}

#[test]
fn the_committed_nginx_prod_conf_is_the_rendering_of_the_registry() {
    let root = repository();
    let output = Command::new("bash")
        .arg(root.join("nginx/render.sh"))
        .arg("prod")
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rendered = String::from_utf8(output.stdout).unwrap();
    let committed = std::fs::read_to_string(root.join("nginx/prod.conf")).unwrap();
    assert!(
        rendered == committed,
        "nginx/prod.conf is not what `bash nginx/render.sh prod > nginx/prod.conf` makes: \
         edit nginx/prod.conf.template and render it"
    );
    for service in registry::all() {
        let upstream = format!("server {}:{} ", service.service, service.port);
        assert!(rendered.contains(&upstream), "no {upstream:?} in prod.conf");
    }
}
