//! `kubectl audit status`: everything about AuditStreams and AuditConsumers that one wants to
//! know when something is off, on one screen, or as JSON for scripts.

mod gather;
pub mod model;
mod render;

use std::io::Write;

use k8s_openapi::jiff::Timestamp;

use crate::cli::{Output, StatusArgs};
use crate::client::Connection;
use crate::error::{Error, Result};

pub async fn run(connection: &Connection, args: &StatusArgs, out: &mut impl Write) -> Result<()> {
    let selection = gather::Selection {
        namespace: (!args.all_namespaces).then_some(connection.namespace.as_str()),
        name: args.name.as_deref(),
        events_since: args.events_since,
    };
    let report = gather::gather(&connection.client, &selection).await?;
    let text = match args.output {
        Output::Json => serde_json::to_string_pretty(&report).map_err(Error::Json)? + "\n",
        Output::Text => render::render(
            &report,
            Timestamp::now(),
            &humantime::format_duration(args.events_since).to_string(),
        ),
    };
    out.write_all(text.as_bytes()).map_err(Error::Output)
}
