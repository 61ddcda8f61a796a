//! The NATS connection: authentication and TLS from mounted files, and the JetStream context.
//!
//! The client connects in the background and reconnects forever: a NATS outage makes the pod
//! unready, never crash-looping, and events resume when the servers come back.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{Client, ConnectOptions, Event};

use crate::config::NatsArgs;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Short enough that a silently dead server (no TCP reset) is noticed within ~20 s.
const PING_INTERVAL: Duration = Duration::from_secs(10);

pub async fn connect(args: &NatsArgs, metrics: Arc<Metrics>) -> Result<Client> {
    let options = options(args).await?.event_callback(move |event| {
        let metrics = metrics.clone();
        async move {
            match &event {
                Event::Connected => {
                    metrics.set_connected(true);
                    tracing::info!("connected to NATS");
                }
                Event::Disconnected => {
                    metrics.set_connected(false);
                    tracing::warn!("disconnected from NATS; reconnecting");
                }
                Event::SlowConsumer(_) | Event::ServerError(_) | Event::ClientError(_) => {
                    tracing::warn!(%event, "NATS connection event");
                }
                _ => tracing::info!(%event, "NATS connection event"),
            }
        }
    });
    options
        .connect(server_addrs(args)?)
        .await
        .map_err(Error::Connect)
}

/// A connection for a command that runs once (`verify`): the same authentication and TLS,
/// but an unreachable server is an error at once rather than retried forever.
pub async fn connect_once(args: &NatsArgs) -> Result<Client> {
    authenticated(args, ConnectOptions::new().name("audit-consumer-verify"))
        .await?
        .connect(server_addrs(args)?)
        .await
        .map_err(Error::Connect)
}

fn server_addrs(args: &NatsArgs) -> Result<Vec<async_nats::ServerAddr>> {
    args.nats_url
        .iter()
        .map(|url| url.trim())
        .filter(|url| !url.is_empty())
        .map(|url| url.parse())
        .collect::<Result<_, _>>()
        .map_err(|err| Error::Config(format!("--nats-url: {err}")))
}

pub fn jetstream(client: Client, args: &NatsArgs) -> jetstream::Context {
    match (&args.js_domain, &args.js_api_prefix) {
        (Some(domain), _) => jetstream::with_domain(client, domain),
        (None, Some(prefix)) => jetstream::with_prefix(client, prefix),
        (None, None) => jetstream::new(client),
    }
}

async fn options(args: &NatsArgs) -> Result<ConnectOptions> {
    let options = ConnectOptions::new()
        .name("audit-consumer")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .ping_interval(PING_INTERVAL);
    authenticated(args, options).await
}

/// `options` with the credentials and TLS settings of `args`.
async fn authenticated(args: &NatsArgs, mut options: ConnectOptions) -> Result<ConnectOptions> {
    if let Some(path) = &args.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|source| read_error("credentials", path, source))?;
    }
    if let Some(path) = &args.nkey_seed_file {
        options = options.nkey(read_secret("NKey seed", path).await?);
    }
    if let Some(path) = &args.password_file {
        let user = match (&args.user, &args.user_file) {
            (Some(user), _) => user.clone(),
            (None, Some(user_file)) => read_secret("user name", user_file).await?,
            (None, None) => {
                unreachable!("clap requires --user or --user-file with --password-file")
            }
        };
        options = options.user_and_password(user, read_secret("password", path).await?);
    }
    if let Some(path) = &args.token_file {
        options = options.token(read_secret("token", path).await?);
    }
    if let Some(path) = &args.tls_ca_file {
        options = options
            .add_root_certificates(path.clone())
            .require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    if args.tls_first {
        options = options.tls_first();
    }
    Ok(options)
}

/// Reads a secret from a mounted file. The trailing newline that editors and `kubectl create
/// secret --from-file` often leave is not part of the secret.
pub(crate) async fn read_secret(what: &'static str, path: &Path) -> Result<String> {
    let contents = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| read_error(what, path, source))?;
    let secret = contents.trim_end_matches(['\r', '\n']).to_owned();
    if secret.is_empty() {
        return Err(Error::Config(format!(
            "the {what} file {} is empty",
            path.display()
        )));
    }
    Ok(secret)
}

fn read_error(what: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::ReadSecret {
        what,
        path: path.to_owned(),
        source,
    }
}
