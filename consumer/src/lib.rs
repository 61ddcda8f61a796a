//! audit-consumer: drains a durable NATS JetStream pull consumer, writes one log line per audit
//! event to standard output, and acks each event only after its line has been written.

pub mod escape;
pub mod event;
pub mod format;
pub mod json;
pub mod redact;
