//! The container's termination message: the fatal error, written where Kubernetes reads it
//! (`terminationMessagePath`) so that `kubectl describe pod` and the AuditConsumer's status
//! can say why a pod exited without anyone reading its logs. Pods run with
//! `terminationMessagePolicy: File`: the kubelet never falls back to the log's tail, which
//! holds audit events.

use std::path::Path;

/// Kubernetes keeps at most this many bytes of a container's termination message.
pub const LIMIT: usize = 4096;

/// Writes `message` to `path`, cut to what Kubernetes keeps (at a character boundary). A
/// failure is only logged: the process is exiting with its error anyway.
pub fn record(path: &Path, message: &str) {
    let mut end = message.len().min(LIMIT);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    if let Err(err) = std::fs::write(path, &message[..end]) {
        tracing::warn!(path = %path.display(), %err, "cannot write the termination message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_replaces_the_file_and_is_cut_to_what_kubernetes_keeps() {
        let dir = std::env::temp_dir().join(format!("termination-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("termination-log");
        record(&path, "a longer first message");
        record(&path, "consumer missing");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "consumer missing");
        record(&path, &"é".repeat(LIMIT));
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(written.len(), LIMIT);
        assert!(written.chars().all(|c| c == 'é'));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
