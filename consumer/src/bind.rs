//! Finding (or, in standalone mode, creating) the stream and the durable pull consumer.

use async_nats::jetstream::consumer::{AckPolicy, Consumer, FromConsumer, PullConsumer, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, stream};

use crate::config::BindingArgs;

/// Why binding did not succeed this time.
#[derive(Debug)]
pub enum BindError {
    /// The stream or the consumer does not exist: retried until the grace period ends.
    Missing,
    /// The consumer exists but can never work (e.g. it is a push consumer).
    Unusable(String),
    /// Anything that may go away by itself: no connection, timeouts, a leader election.
    Transient(String),
}

pub async fn bind(js: &jetstream::Context, args: &BindingArgs) -> Result<PullConsumer, BindError> {
    if args.create {
        create(js, args).await
    } else {
        existing(js, args).await
    }
}

async fn existing(js: &jetstream::Context, args: &BindingArgs) -> Result<PullConsumer, BindError> {
    let stream = js
        .get_stream_no_info(&args.stream)
        .await
        .map_err(|err| BindError::Unusable(format!("invalid stream name: {err}")))?;
    let info = stream
        .consumer_info(&args.consumer)
        .await
        .map_err(|err| match err.kind() {
            ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound => {
                BindError::Missing
            }
            ConsumerInfoErrorKind::InvalidName => {
                BindError::Unusable(format!("invalid consumer name: {err}"))
            }
            _ => BindError::Transient(err.to_string()),
        })?;
    let config = pull::Config::try_from_consumer_config(info.config.clone()).map_err(|_| {
        BindError::Unusable("it is a push consumer; audit-consumer needs a pull consumer".into())
    })?;
    if config.ack_policy == AckPolicy::None {
        return Err(BindError::Unusable(
            "its ack policy is `none`, so events could be lost; use `explicit`".into(),
        ));
    }
    Ok(Consumer::new(config, info, js.clone()))
}

async fn create(js: &jetstream::Context, args: &BindingArgs) -> Result<PullConsumer, BindError> {
    let stream = js
        .get_or_create_stream(stream::Config {
            name: args.stream.clone(),
            subjects: args.subjects.clone(),
            max_age: args.stream_max_age,
            max_bytes: args.stream_max_bytes,
            max_messages: args.stream_max_msgs,
            num_replicas: args.stream_replicas,
            ..Default::default()
        })
        .await
        .map_err(|err| BindError::Transient(format!("cannot create stream: {err}")))?;
    stream
        .get_or_create_consumer(
            &args.consumer,
            pull::Config {
                durable_name: Some(args.consumer.clone()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: args.ack_wait,
                max_deliver: args.max_deliver,
                ..Default::default()
            },
        )
        .await
        .map_err(|err| BindError::Transient(format!("cannot create consumer: {err}")))
}
