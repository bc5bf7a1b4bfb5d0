//! Where relays send events.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::{Event, PublishError};

/// A sink. `publish` returns only once the sink has the event (an HTTP 2xx,
/// a JetStream ack): the relay marks the event published after that, so a
/// crash in between publishes it again — at least once, never zero times.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Delivers one event.
    ///
    /// # Errors
    ///
    /// [`PublishError::Transient`] to retry with backoff,
    /// [`PublishError::Permanent`] when the sink refused the event itself.
    async fn publish(&self, event: &Event) -> Result<(), PublishError>;

    /// Checked once by each relay before its first claim: can the sink
    /// absorb a redelivery that comes up to `redelivery` after the first
    /// delivery (the relay's lease plus its backoff cap)? Returns what is
    /// wrong, which the relay logs as a warning; `None` when all is well.
    ///
    /// The default has nothing to check. [`NatsPublisher`](crate::NatsPublisher)
    /// compares the stream's duplicate window with `redelivery`.
    async fn preflight(&self, redelivery: Duration) -> Option<String> {
        let _ = redelivery;
        None
    }
}

#[async_trait]
impl<P: Publisher + ?Sized> Publisher for std::sync::Arc<P> {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        (**self).publish(event).await
    }

    async fn preflight(&self, redelivery: Duration) -> Option<String> {
        (**self).preflight(redelivery).await
    }
}

/// Sends events into a tokio channel: for tests and users' unit tests.
#[derive(Debug, Clone)]
pub struct ChannelPublisher {
    tx: mpsc::UnboundedSender<Event>,
}

impl ChannelPublisher {
    /// A publisher and the receiving end.
    #[must_use]
    pub fn new() -> (ChannelPublisher, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ChannelPublisher { tx }, rx)
    }
}

#[async_trait]
impl Publisher for ChannelPublisher {
    async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        self.tx.send(event.clone()).map_err(|_| PublishError::Transient("the receiver is gone".to_owned()))
    }
}

/// Accepts everything and keeps nothing: for measuring the relay alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullPublisher;

#[async_trait]
impl Publisher for NullPublisher {
    async fn publish(&self, _event: &Event) -> Result<(), PublishError> {
        Ok(())
    }
}
