//! NATS in operator mode, as production runs it: an operator, an account and users as NKeys,
//! their JWTs signed down the chain (operator -> account -> user), a server that trusts the
//! operator and resolves the account from memory, and `.creds` files as `nsc generate creds`
//! writes them.
//!
//! The JWTs are what `nsc` issues (github.com/nats-io/jwt v2): a header
//! `{"typ":"JWT","alg":"ed25519-nkey"}`, claims with `iss`/`sub` public keys and a `nats`
//! section, both base64url without padding, and an Ed25519 signature by the issuer's key over
//! `header.claims`.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde_json::{Value, json};

/// An operator with one account (JetStream enabled) and a system account.
pub struct Accounts {
    operator: KeyPair,
    account: KeyPair,
    system: KeyPair,
    /// Users whose JWTs the account has revoked, with the revocation time.
    revoked: Vec<(String, u64)>,
}

/// A user of the account: its `.creds` file text (JWT and seed) and public key.
pub struct User {
    pub creds: String,
    pub public_key: String,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// A signed JWT of `claims` (to which `iss`, `iat` and `jti` are added) by `issuer`.
fn jwt(issuer: &KeyPair, mut claims: Value) -> anyhow::Result<String> {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    claims["iss"] = issuer.public_key().into();
    claims["iat"] = now().into();
    claims["jti"] = format!("{:x}{:x}", now(), fastrand::u64(..)).into();
    let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?);
    let signed = format!("{header}.{claims}");
    let signature = issuer
        .sign(signed.as_bytes())
        .map_err(|e| anyhow::anyhow!("signing a JWT: {e}"))?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

impl Accounts {
    pub fn new() -> Self {
        Self {
            operator: KeyPair::new_operator(),
            account: KeyPair::new_account(),
            system: KeyPair::new_account(),
            revoked: Vec::new(),
        }
    }

    /// A user of the account with every permission; its JWT expires `expires_in_seconds`
    /// from now when given.
    pub fn user(&self, name: &str, expires_in_seconds: Option<i64>) -> anyhow::Result<User> {
        self.user_with_permissions(name, expires_in_seconds, json!({}), json!({}))
    }

    /// A user whose publish and subscribe permissions are `publish` and `subscribe` (the
    /// `allow` / `deny` lists of a user JWT).
    pub fn user_with_permissions(
        &self,
        name: &str,
        expires_in_seconds: Option<i64>,
        publish: Value,
        subscribe: Value,
    ) -> anyhow::Result<User> {
        let user = KeyPair::new_user();
        let mut claims = json!({
            "name": name,
            "sub": user.public_key(),
            "nats": {
                "pub": publish,
                "sub": subscribe,
                "subs": -1,
                "data": -1,
                "payload": -1,
                "type": "user",
                "version": 2,
            },
        });
        if let Some(seconds) = expires_in_seconds {
            let expires = i64::try_from(now())? + seconds;
            claims["exp"] = expires.into();
        }
        let jwt = jwt(&self.account, claims)?;
        let seed = user
            .seed()
            .map_err(|e| anyhow::anyhow!("a user seed: {e}"))?;
        Ok(User {
            creds: creds_file(&jwt, &seed),
            public_key: user.public_key(),
        })
    }

    /// Revokes every JWT of the user issued until now; the server learns it from the
    /// account JWT in its configuration (so restart or reload the server afterwards).
    pub fn revoke(&mut self, user_public_key: &str) {
        self.revoked.push((user_public_key.to_owned(), now() + 1));
    }

    /// The server configuration that trusts the operator and knows both accounts, with
    /// JetStream enabled for the account.
    pub fn server_config(&self) -> anyhow::Result<String> {
        let operator = jwt(
            &self.operator,
            json!({
                "name": "audit-tests",
                "sub": self.operator.public_key(),
                "nats": { "type": "operator", "version": 2 },
            }),
        )?;
        let revocations: serde_json::Map<String, Value> = self
            .revoked
            .iter()
            .map(|(user, at)| (user.clone(), (*at).into()))
            .collect();
        let account = jwt(
            &self.operator,
            json!({
                "name": "audit",
                "sub": self.account.public_key(),
                "nats": {
                    "limits": {
                        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                        "wildcards": true, "conn": -1, "leaf": -1,
                        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
                    },
                    "revocations": revocations,
                    "type": "account",
                    "version": 2,
                },
            }),
        )?;
        let system = jwt(
            &self.operator,
            json!({
                "name": "SYS",
                "sub": self.system.public_key(),
                "nats": { "type": "account", "version": 2 },
            }),
        )?;
        Ok(format!(
            "operator: {operator}\nsystem_account: {system_key}\nresolver: MEMORY\nresolver_preload: {{\n  {account_key}: {account}\n  {system_key}: {system}\n}}\n",
            system_key = self.system.public_key(),
            account_key = self.account.public_key(),
        ))
    }
}

impl Default for Accounts {
    fn default() -> Self {
        Self::new()
    }
}

/// A `.creds` file as `nsc generate creds` writes it.
fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}
