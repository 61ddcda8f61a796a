//! Pipeline step 4 (I/O): make the stream on NATS match the desired configuration: create it,
//! adopt it when allowed, or update the owned fields that differ (a spec change or drift).

use async_nats::jetstream::{
    self, ErrorCode,
    context::{CreateStreamError, CreateStreamErrorKind, GetStreamError, GetStreamErrorKind},
    stream::{Config, Info},
};

use super::drift::{Difference, differences, overlay};
use crate::{
    error::{Error, Result},
    ownership::{Claim, Deletion, claim},
};

/// What applying did to the stream.
#[derive(Debug, PartialEq)]
pub enum Change {
    Created,
    /// An existing stream was taken over; the differences were rewritten.
    Adopted(Vec<Difference>),
    /// Owned fields differed and were rewritten.
    Updated(Vec<Difference>),
    Unchanged,
}

/// The result of applying: the change made and the stream as NATS now reports it.
#[derive(Debug)]
pub struct Applied {
    pub change: Change,
    pub info: Info,
}

/// Creates or updates the stream. `owner` is this resource's marker; `owner_exists` says
/// whether another marker still names a live AuditStream (a stale marker, left by a
/// resource deleted with `Retain`, counts as unclaimed).
pub async fn apply(
    js: &jetstream::Context,
    desired: &Config,
    owner: &str,
    adopt: bool,
    owner_exists: impl Fn(&str) -> bool,
) -> Result<Applied> {
    let Some(current) = current_info(js, &desired.name).await? else {
        let stream = js
            .create_stream(desired.clone())
            .await
            .map_err(create_error)?;
        return Ok(Applied {
            change: Change::Created,
            info: stream.cached_info().clone(),
        });
    };
    let adopting = match claim(&current.config.metadata, owner) {
        Claim::Ours => false,
        Claim::Other(other) if owner_exists(other) => {
            return Err(Error::StreamOwnedByOther {
                stream: desired.name.clone(),
                owner: other.to_owned(),
            });
        }
        Claim::Other(_) | Claim::Unclaimed if adopt => true,
        Claim::Other(_) | Claim::Unclaimed => {
            return Err(Error::StreamNotAdopted {
                stream: desired.name.clone(),
            });
        }
    };
    let differences = differences(&current.config, desired);
    if differences.is_empty() {
        return Ok(Applied {
            change: Change::Unchanged,
            info: current,
        });
    }
    let info = js
        .update_stream(overlay(&current.config, desired))
        .await
        .map_err(create_error)?;
    let change = if adopting {
        Change::Adopted(differences)
    } else {
        Change::Updated(differences)
    };
    Ok(Applied { change, info })
}

/// Deletes the stream if it is this resource's.
pub async fn delete(js: &jetstream::Context, name: &str, owner: &str) -> Result<Deletion> {
    let Some(current) = current_info(js, name).await? else {
        return Ok(Deletion::Absent);
    };
    if !matches!(claim(&current.config.metadata, owner), Claim::Ours) {
        return Ok(Deletion::NotOurs);
    }
    match js.delete_stream(name).await {
        Ok(_) => Ok(Deletion::Deleted),
        Err(e) if is_not_found(&e) => Ok(Deletion::Absent),
        Err(e) => Err(get_error(e)),
    }
}

/// The stream's current info, or `None` when it does not exist.
pub async fn current_info(js: &jetstream::Context, name: &str) -> Result<Option<Info>> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream.cached_info().clone())),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(get_error(e)),
    }
}

fn is_not_found(e: &GetStreamError) -> bool {
    matches!(e.kind(), GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

fn get_error(e: GetStreamError) -> Error {
    match e.kind() {
        GetStreamErrorKind::EmptyName | GetStreamErrorKind::InvalidStreamName => {
            Error::InvalidSpec(format!("stream name: {e}"))
        }
        GetStreamErrorKind::Request | GetStreamErrorKind::JetStream(_) => {
            Error::JetStreamRequest(e.to_string())
        }
    }
}

fn create_error(e: CreateStreamError) -> Error {
    match e.kind() {
        CreateStreamErrorKind::JetStream(server) => Error::StreamConfigRejected(server.to_string()),
        CreateStreamErrorKind::EmptyStreamName | CreateStreamErrorKind::InvalidStreamName => {
            Error::InvalidSpec(format!("stream name: {e}"))
        }
        _ => Error::JetStreamRequest(e.to_string()),
    }
}
