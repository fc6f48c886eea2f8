//! Who is calling, from `Authorization: Bearer <token>`.
//!
//! - Admin routes ([`AdminAuth`]) take an admin token (`ADMIN_TOKEN`; a
//!   comma-separated list while one is being rotated out).
//! - Customer routes ([`CustomerAuth`]) take a customer's JWT, whose `sub`
//!   is the customer id, or an admin token, which acts for any customer.
//!   A JWT is verified with `JWT_SECRET` (HS256) or the public key in
//!   `JWT_PUBLIC_KEY_FILE` (RS256 or EdDSA); `exp` is required, `iss` and
//!   `aud` are checked when `JWT_ISSUER` and `JWT_AUDIENCE` are set.
//!
//! A token that does not pass is a 401 naming what is wrong with it (absent,
//! expired, forged, ...), never which part of a secret matched.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use poem::Request;
use poem_openapi::{SecurityScheme, auth::Bearer};

use super::ApiError;
use crate::config::Secret;

/// How customer tokens are verified (from the configuration).
#[derive(Clone)]
pub struct JwtSettings {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
    /// Where the key came from, for the startup log: never the key itself.
    source: String,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl std::fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSettings")
            .field("key", &self.source)
            .field("algorithms", &self.algorithms)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl JwtSettings {
    /// HS256 with a shared secret.
    pub fn secret(secret: &Secret) -> Self {
        JwtSettings {
            key: DecodingKey::from_secret(secret.expose().as_bytes()),
            algorithms: vec![Algorithm::HS256],
            source: "JWT_SECRET (HS256)".into(),
            issuer: None,
            audience: None,
        }
    }

    /// RS256 with an RSA public key, or EdDSA with an Ed25519 one, in PEM.
    pub(crate) fn public_key(pem: &[u8], file: &str) -> Result<Self, &'static str> {
        let (key, algorithm, kind) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            (key, Algorithm::RS256, "RS256")
        } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            (key, Algorithm::EdDSA, "EdDSA")
        } else {
            return Err("not an RSA or Ed25519 public key in PEM");
        };
        Ok(JwtSettings {
            key,
            algorithms: vec![algorithm],
            source: format!("{file} ({kind})"),
            issuer: None,
            audience: None,
        })
    }

    /// What verifies tokens, for the startup log.
    pub fn describe(&self) -> &str {
        &self.source
    }

    fn validation(&self) -> Validation {
        let mut validation = Validation::new(self.algorithms[0]);
        validation.algorithms = self.algorithms.clone();
        validation.set_required_spec_claims(&["exp", "sub"]);
        // A token issued for later is not valid yet (jsonwebtoken leaves
        // `nbf` unchecked unless asked).
        validation.validate_nbf = true;
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            // Without one configured, a token's `aud` is not ours to judge.
            None => validation.validate_aud = false,
        }
        validation
    }
}

/// The tokens this service accepts; in the app's request data.
#[derive(Clone, Debug)]
pub struct Authenticator(Arc<Keys>);

struct Keys {
    admin_tokens: Vec<Secret>,
    /// The settings, and the validation built from them once.
    jwt: Option<(JwtSettings, Validation)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("admin_tokens", &self.admin_tokens)
            .field("jwt", &self.jwt.as_ref().map(|(settings, _)| settings))
            .finish()
    }
}

impl Authenticator {
    pub fn new(admin_tokens: Vec<Secret>, jwt: Option<JwtSettings>) -> Self {
        let jwt = jwt.map(|settings| {
            let validation = settings.validation();
            (settings, validation)
        });
        Authenticator(Arc::new(Keys { admin_tokens, jwt }))
    }

    fn is_admin(&self, token: &str) -> bool {
        // Every token is compared, so the time taken does not say which one
        // matched or how far.
        self.0.admin_tokens.iter().fold(false, |found, admin| {
            found | constant_time_eq(admin.expose().as_bytes(), token.as_bytes())
        })
    }

    /// The caller a bearer token stands for.
    pub fn caller(&self, token: &str) -> Result<Caller, ApiError> {
        if self.is_admin(token) {
            return Ok(Caller::Admin);
        }
        let Some((settings, validation)) = &self.0.jwt else {
            return Err(unauthorized(
                "the bearer token is not an admin token, and this service verifies no customer \
                 tokens (no JWT_SECRET or JWT_PUBLIC_KEY_FILE)",
            ));
        };
        match jsonwebtoken::decode::<Claims>(token, &settings.key, validation) {
            Ok(data) if !data.claims.sub.is_empty() => Ok(Caller::Customer(data.claims.sub)),
            Ok(_) => Err(unauthorized("the token's sub (the customer id) is empty")),
            Err(error) => Err(unauthorized(match error.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                ErrorKind::InvalidSignature => "the token's signature does not verify",
                ErrorKind::InvalidAlgorithm => "the token is signed with another algorithm",
                ErrorKind::InvalidIssuer => "the token's issuer (iss) is not the expected one",
                ErrorKind::InvalidAudience => "the token's audience (aud) is not this API",
                ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim (exp, sub)",
                _ => "the bearer token is neither an admin token nor a well-formed JWT",
            })),
        }
    }
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(
        poem::http::StatusCode::UNAUTHORIZED,
        "unauthorized",
        message,
    )
}

/// Who a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// An admin token: acts for any customer.
    Admin,
    /// A customer's JWT: acts for this customer id only.
    Customer(String),
}

impl Caller {
    /// The customer the caller is limited to; `None` for an admin.
    pub fn customer(&self) -> Option<&str> {
        match self {
            Caller::Admin => None,
            Caller::Customer(id) => Some(id),
        }
    }

    /// Whether the caller may see and act on what belongs to `customer_id`.
    pub fn acts_for(&self, customer_id: &str) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Customer(id) => id == customer_id,
        }
    }
}

/// An admin token (`ADMIN_TOKEN`).
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check_admin")]
pub struct AdminAuth(());

async fn check_admin(req: &Request, bearer: Bearer) -> poem::Result<()> {
    admin(req, &bearer.token)
}

/// What [`AdminAuth`] checks, for a route outside the OpenAPI spec (the
/// admin console's forwarder): 401 unless `Authorization` carries an admin
/// token as a bearer token.
pub fn require_admin(req: &Request) -> poem::Result<()> {
    let token = req
        .headers()
        .get(poem::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| unauthorized("this route takes the admin token as a bearer token"))?;
    admin(req, token)
}

fn admin(req: &Request, token: &str) -> poem::Result<()> {
    match authenticator(req)?.caller(token)? {
        Caller::Admin => Ok(()),
        Caller::Customer(_) => Err(unauthorized("this route takes an admin token").into()),
    }
}

/// A customer's JWT (its `sub` is the customer id), or an admin token,
/// which acts for any customer.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_customer")]
pub struct CustomerAuth(pub Caller);

async fn check_customer(req: &Request, bearer: Bearer) -> poem::Result<Caller> {
    Ok(authenticator(req)?.caller(&bearer.token)?)
}

fn authenticator(req: &Request) -> poem::Result<&Authenticator> {
    req.data::<Authenticator>()
        .ok_or_else(|| ApiError::internal(&"no Authenticator in the app's data").into())
}

/// Compares without leaking, through timing, how much of the token matched;
/// a length mismatch still compares every byte of the token.
fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut differ = u8::from(expected.len() != given.len());
    for (i, byte) in given.iter().enumerate() {
        differ |= byte ^ expected.get(i).copied().unwrap_or(!byte);
    }
    differ == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const SECRET: &str = "a-test-secret-of-thirty-two-bytes!";

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn in_an_hour() -> i64 {
        chrono::Utc::now().timestamp() + 3600
    }

    fn authenticator(issuer: Option<&str>, audience: Option<&str>) -> Authenticator {
        let mut jwt = JwtSettings::secret(&Secret::new(SECRET));
        jwt.issuer = issuer.map(str::to_string);
        jwt.audience = audience.map(str::to_string);
        Authenticator::new(
            vec![
                Secret::new("old-admin-token"),
                Secret::new("new-admin-token"),
            ],
            Some(jwt),
        )
    }

    fn refusal(result: Result<Caller, ApiError>) -> String {
        let error = result.unwrap_err();
        assert_eq!(error.status, 401);
        error.message
    }

    #[test]
    fn tokens_match_only_when_identical() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"secret", b"secre"));
        assert!(!constant_time_eq(b"secret", b""));
    }

    #[test]
    fn every_configured_admin_token_is_an_admin() {
        let auth = authenticator(None, None);
        assert_eq!(auth.caller("old-admin-token").unwrap(), Caller::Admin);
        assert_eq!(auth.caller("new-admin-token").unwrap(), Caller::Admin);
        assert!(auth.caller("new-admin-tokeN").is_err());
    }

    #[test]
    fn a_valid_jwt_is_its_subject() {
        let auth = authenticator(None, None);
        let jwt = token(
            serde_json::json!({"sub": "c1", "exp": in_an_hour()}),
            SECRET,
        );
        assert_eq!(auth.caller(&jwt).unwrap(), Caller::Customer("c1".into()));
    }

    #[test]
    fn expired_forged_and_malformed_tokens_are_told_apart() {
        let auth = authenticator(None, None);
        let expired = token(serde_json::json!({"sub": "c1", "exp": 1_000_000}), SECRET);
        assert_eq!(refusal(auth.caller(&expired)), "the token has expired");
        let forged = token(
            serde_json::json!({"sub": "c1", "exp": in_an_hour()}),
            "another-secret-of-thirty-two-bytes",
        );
        assert!(refusal(auth.caller(&forged)).contains("signature"));
        let not_yet = token(
            serde_json::json!({"sub": "c1", "exp": in_an_hour() + 3600, "nbf": in_an_hour()}),
            SECRET,
        );
        assert_eq!(
            refusal(auth.caller(&not_yet)),
            "the token is not valid yet (nbf)"
        );
        let no_exp = token(serde_json::json!({"sub": "c1"}), SECRET);
        assert!(refusal(auth.caller(&no_exp)).contains("required claim"));
        assert!(refusal(auth.caller("not.a.jwt")).contains("well-formed"));
        // An unsigned token ({"alg":"none"}) is refused whatever it claims.
        let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJjMSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(auth.caller(unsigned).is_err());
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let auth = authenticator(Some("https://id.example"), Some("orders"));
        let good = token(
            serde_json::json!({"sub": "c1", "exp": in_an_hour(), "iss": "https://id.example", "aud": "orders"}),
            SECRET,
        );
        assert_eq!(auth.caller(&good).unwrap(), Caller::Customer("c1".into()));
        let other_issuer = token(
            serde_json::json!({"sub": "c1", "exp": in_an_hour(), "iss": "https://evil.example", "aud": "orders"}),
            SECRET,
        );
        assert!(refusal(auth.caller(&other_issuer)).contains("issuer"));
        let other_audience = token(
            serde_json::json!({"sub": "c1", "exp": in_an_hour(), "iss": "https://id.example", "aud": "billing"}),
            SECRET,
        );
        assert!(refusal(auth.caller(&other_audience)).contains("audience"));
    }

    #[test]
    fn without_a_jwt_key_only_admin_tokens_pass() {
        let auth = Authenticator::new(vec![Secret::new("admin")], None);
        assert_eq!(auth.caller("admin").unwrap(), Caller::Admin);
        let jwt = token(
            serde_json::json!({"sub": "c1", "exp": in_an_hour()}),
            SECRET,
        );
        assert!(refusal(auth.caller(&jwt)).contains("no customer tokens"));
    }

    #[test]
    fn a_customer_acts_only_for_itself_and_an_admin_for_anyone() {
        assert!(Caller::Customer("c1".into()).acts_for("c1"));
        assert!(!Caller::Customer("c1".into()).acts_for("c2"));
        assert!(Caller::Admin.acts_for("c2"));
    }

    /// A key pair made for this test only (`openssl genpkey -algorithm ed25519`).
    const ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEINr/fVH5024W2Z0WBM+PFCA9KsUUANdT2CN1z3gvd7Tq
-----END PRIVATE KEY-----
";
    const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA6eAn8qhknejcf2VhxAauezjJnxwzRU10zlMGCnUKCo4=
-----END PUBLIC KEY-----
";
    /// Its public half only: RSA keys are recognised as RS256.
    const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA0j3NswpzlHAUj8H0L7Gi
lk1W0Cxvj+2YrHyMYYffpEzNBhicpEpn/aFValtpjXLbHQqkJaynHY5QiYX6O0y4
1r7mBOpXsvTL99ToaxYUFylxpbw0jjsXo3oeEaxEff32Zl1n+AON2c64bk7MXWAl
YdUz9Y2qP9YxjMKYVRV1p+QhrUExIF4b0LkGMELo70J1K/kZjGZwPNbnB5gIxj1U
e+J7u0ViCj7QHDqygUtYFXIymcRQq3H913ESOIn2vlcypz161Grv6TbSrQ6ZX259
RQrg9OQiuTN/BkFPorPJlNo0mBA4jIsL+guP7C+1/YzdLpNSYosD4wmvIM6TkP0w
VQIDAQAB
-----END PUBLIC KEY-----
";

    #[test]
    fn a_public_key_file_verifies_eddsa_tokens_and_names_rs256_for_rsa() {
        let settings = JwtSettings::public_key(ED25519_PUBLIC.as_bytes(), "ed.pem").unwrap();
        assert_eq!(settings.describe(), "ed.pem (EdDSA)");
        let auth = Authenticator::new(Vec::new(), Some(settings));
        let claims = serde_json::json!({"sub": "c9", "exp": in_an_hour()});
        let signed = encode(
            &Header::new(Algorithm::EdDSA),
            &claims,
            &EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(auth.caller(&signed).unwrap(), Caller::Customer("c9".into()));
        // An HS256 token, even one signed with the public key's bytes, is
        // refused: the algorithm comes from the configuration, not the token.
        let confused = token(claims, ED25519_PUBLIC);
        assert!(refusal(auth.caller(&confused)).contains("algorithm"));

        let rsa = JwtSettings::public_key(RSA_PUBLIC.as_bytes(), "rsa.pem").unwrap();
        assert_eq!(rsa.describe(), "rsa.pem (RS256)");
        assert!(JwtSettings::public_key(b"not a key", "x.pem").is_err());
    }
}
