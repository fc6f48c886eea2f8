//! A bad configuration stops the real binary at once with exit code 64
//! (EX_USAGE) and one line on stderr naming the variable.

use shared::testing::refused_configuration;

const BINARY: &str = env!("CARGO_BIN_EXE_notification-service");

#[test]
fn an_smtp_port_that_is_not_a_number_exits_64_naming_smtp_port() {
    let stderr = refused_configuration(BINARY, &[("SMTP_PORT", "mail")]);
    assert!(stderr.contains("SMTP_PORT=\"mail\""), "{stderr}");
}

#[test]
fn an_smtp_username_without_a_password_exits_64_naming_smtp_password() {
    let stderr = refused_configuration(
        BINARY,
        &[("SMTP_TLS", "starttls"), ("SMTP_USERNAME", "shop")],
    );
    assert!(stderr.contains("SMTP_PASSWORD=\"\""), "{stderr}");
    assert!(stderr.contains("SMTP_USERNAME"), "{stderr}");
}
