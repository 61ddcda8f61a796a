//! Which objects on NATS are the operator's. A stream or durable consumer it creates (or
//! adopts) carries, in its metadata, a mark naming the resource that manages it
//! (`namespace/name`); only what carries a resource's mark is changed or deleted for it, so a
//! hand-made object of the same name is never taken over or removed silently.

use std::collections::HashMap;

use kube::Resource;

/// Metadata key of the mark, on streams and durable consumers alike.
pub const OWNER_KEY: &str = "audit.eventsaudit.io/owner";

/// The mark of `object`: `namespace/name`.
pub fn owner_of<K: Resource>(object: &K) -> String {
    let meta = object.meta();
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// Who may manage an existing object, judged from its mark.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim<'a> {
    /// Marked by `owner`.
    Ours,
    Unclaimed,
    /// Marked by another resource (`namespace/name`).
    Other(&'a str),
}

/// The claim on an object with `metadata`, as seen by `owner` (a mark from [`owner_of`]).
pub fn claim<'a>(metadata: &'a HashMap<String, String>, owner: &str) -> Claim<'a> {
    match metadata.get(OWNER_KEY) {
        Some(marker) if marker == owner => Claim::Ours,
        Some(marker) => Claim::Other(marker),
        None => Claim::Unclaimed,
    }
}

/// What deleting an object from NATS did.
#[derive(Debug, PartialEq, Eq)]
pub enum Deletion {
    Deleted,
    /// There was no such object.
    Absent,
    /// The object does not carry this resource's mark; it was left alone.
    NotOurs,
}

impl Deletion {
    /// The reason of the Event that reports it.
    pub fn reason(&self) -> &'static str {
        match self {
            Deletion::Deleted | Deletion::Absent => "Deleted",
            Deletion::NotOurs => "NotDeleted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_names_the_resource_and_decides_the_claim() {
        let mut stream = crate::crd::AuditStream::new(
            "orders.audit",
            serde_yaml::from_str("connection: {servers: [nats://n:4222]}\nsubjects: [a]").unwrap(),
        );
        stream.metadata.namespace = Some("shop".into());
        let owner = owner_of(&stream);
        assert_eq!(owner, "shop/orders.audit");
        let marked = |mark: &str| HashMap::from([(OWNER_KEY.to_owned(), mark.to_owned())]);
        assert_eq!(claim(&marked(&owner), &owner), Claim::Ours);
        assert_eq!(
            claim(&marked("shop/other"), &owner),
            Claim::Other("shop/other")
        );
        assert_eq!(claim(&HashMap::new(), &owner), Claim::Unclaimed);
    }
}
