//! Passes a watch's changes on to whoever listens at the moment: the controllers of the
//! current leadership term. While nobody listens (standing by) the changes go nowhere; the
//! caches hold the state, and a new term starts with a pass over them.

use std::sync::{Arc, Mutex, MutexGuard};

use futures::Stream;
use kube::runtime::watcher;
use tokio::sync::mpsc;

/// One watch's outlet; clones share the listeners.
pub struct Relay<T> {
    listeners: Arc<Mutex<Vec<mpsc::UnboundedSender<T>>>>,
}

impl<T> Clone for Relay<T> {
    fn clone(&self) -> Self {
        Self {
            listeners: self.listeners.clone(),
        }
    }
}

impl<T> Default for Relay<T> {
    fn default() -> Self {
        Self {
            listeners: Arc::default(),
        }
    }
}

impl<T: Clone + Send + 'static> Relay<T> {
    /// Everything passed on from now until the stream is dropped, in the shape a controller
    /// takes its triggers. Unbounded: a controller takes its triggers as they come (it merges
    /// requests for one object), and the watch must never wait for a controller.
    pub fn listen(&self) -> impl Stream<Item = Result<T, watcher::Error>> + Send + 'static {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.lock().push(sender);
        futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (Ok(item), receiver))
        })
    }

    /// Gives `item` to every listener, and forgets the listeners that are gone.
    pub fn pass_on(&self, item: &T) {
        self.lock()
            .retain(|listener| listener.send(item.clone()).is_ok());
    }

    fn lock(&self) -> MutexGuard<'_, Vec<mpsc::UnboundedSender<T>>> {
        // A panic while holding the lock leaves a plain list behind; keep using it.
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use futures::{FutureExt, StreamExt};

    use super::*;

    fn received<T>(stream: impl Stream<Item = Result<T, watcher::Error>>) -> Vec<T> {
        let mut stream = std::pin::pin!(stream);
        let mut items = Vec::new();
        while let Some(Some(item)) = stream.next().now_or_never() {
            items.push(item.expect("a relay passes on no errors"));
        }
        items
    }

    #[test]
    fn nothing_passed_on_before_listening_is_heard() {
        let relay = Relay::default();
        relay.pass_on(&1);
        let listener = relay.listen();
        relay.pass_on(&2);
        assert_eq!(received(listener), vec![2]);
    }

    #[test]
    fn every_listener_hears_everything_and_one_gone_is_forgotten() {
        let relay = Relay::default();
        let first = relay.listen();
        let second = relay.listen();
        relay.pass_on(&"a");
        drop(second);
        relay.pass_on(&"b");
        assert_eq!(relay.lock().len(), 1);
        assert_eq!(received(first), vec!["a", "b"]);
    }
}
