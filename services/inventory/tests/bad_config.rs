//! A bad configuration stops the real binary at once with exit code 64
//! (EX_USAGE) and one line on stderr naming the variable.

use shared::testing::refused_configuration;

#[test]
fn a_port_that_is_not_a_number_exits_64_naming_port() {
    let stderr = refused_configuration(
        env!("CARGO_BIN_EXE_inventory-service"),
        &[("PORT", "notaport")],
    );
    assert!(stderr.contains("PORT=\"notaport\""), "{stderr}");
}
