//! What the operator reads from a NATS credentials file itself: the user JWT's expiry, so
//! that an expired JWT is reported as expired (with when, and what to do) instead of as a
//! login the server rejected.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// When the user JWT of a `.creds` file (as `nsc generate creds` writes it) expires, in
/// seconds since the epoch; `None` for a JWT without expiry. An unreadable file is an error
/// with the reason.
pub fn user_jwt_expiry(creds: &str) -> Result<Option<i64>, String> {
    let jwt = creds
        .lines()
        .skip_while(|line| !line.contains("BEGIN NATS USER JWT"))
        .nth(1)
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .ok_or("no user JWT block")?;
    let claims = jwt.split('.').nth(1).ok_or("the user JWT has no claims")?;
    // nsc writes no padding; tolerate a file that has it.
    let claims = URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .map_err(|e| format!("the user JWT's claims are not base64url: {e}"))?;
    let claims: serde_json::Value = serde_json::from_slice(&claims)
        .map_err(|e| format!("the user JWT's claims are not JSON: {e}"))?;
    Ok(claims.get("exp").and_then(serde_json::Value::as_i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(claims: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
        let claims = URL_SAFE_NO_PAD.encode(claims);
        format!(
            "-----BEGIN NATS USER JWT-----\n{header}.{claims}.c2ln\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\nSUAEXAMPLE\n------END USER NKEY SEED------\n"
        )
    }

    #[test]
    fn the_expiry_comes_from_the_user_jwt_claims() {
        assert_eq!(
            user_jwt_expiry(&creds(r#"{"sub":"UA","exp":1800000000}"#)),
            Ok(Some(1_800_000_000))
        );
        assert_eq!(user_jwt_expiry(&creds(r#"{"sub":"UA"}"#)), Ok(None));
    }

    #[test]
    fn a_file_without_a_readable_jwt_says_why() {
        assert!(user_jwt_expiry("just a seed").is_err());
        assert!(
            user_jwt_expiry("-----BEGIN NATS USER JWT-----\nnot-a-jwt\n")
                .unwrap_err()
                .contains("no claims")
        );
        assert!(
            user_jwt_expiry("-----BEGIN NATS USER JWT-----\na.%%%.c\n")
                .unwrap_err()
                .contains("base64url")
        );
    }
}
