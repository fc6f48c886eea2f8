//! Admin routes take `Authorization: Bearer $ADMIN_TOKEN`.

use poem::Request;
use poem_openapi::{SecurityScheme, auth::Bearer};

/// The expected token, stored in the app's request data.
#[derive(Clone)]
pub struct AdminToken(pub String);

/// Admin bearer token (`ADMIN_TOKEN`).
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check_admin")]
pub struct AdminAuth(());

async fn check_admin(req: &Request, bearer: Bearer) -> Option<()> {
    let expected = req.data::<AdminToken>()?;
    constant_time_eq(expected.0.as_bytes(), bearer.token.as_bytes()).then_some(())
}

/// Compares without leaking, through timing, how much of the token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn tokens_match_only_when_identical() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
