//! Pub/Sub clients (Google's official `google-cloud-pubsub` crate) configured the way Sluice
//! needs them, resource names, and the error type whose `is_retryable` decides retries.
//!
//! The crate does not read `PUBSUB_EMULATOR_HOST`; Sluice does: with it set, every client talks
//! plaintext to `http://HOST` with anonymous credentials. Without it the crate's defaults apply
//! (pubsub.googleapis.com with Application Default Credentials / Workload Identity).

use google_cloud_auth::credentials::Credentials;
use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::error::PublishError;

/// Errors of Pub/Sub calls, classified by type.
#[derive(Debug, thiserror::Error)]
pub enum PubSubError {
    /// A client could not be created (bad endpoint, no credentials).
    #[error("cannot create a Pub/Sub client: {0}")]
    Client(#[source] google_cloud_gax::client_builder::Error),
    /// A call failed; see [`PubSubError::is_retryable`].
    #[error("{0}")]
    Rpc(#[source] google_cloud_gax::error::Error),
    /// A publish failed; see [`PubSubError::is_retryable`].
    #[error("{0}")]
    Publish(#[source] google_cloud_pubsub::error::PublishError),
    /// A resource name that cannot be resolved (e.g. no project).
    #[error("{0}")]
    Name(String),
}

impl PubSubError {
    /// Whether the same call may succeed later: transport failures, timeouts and the gRPC codes
    /// Google's client libraries retry (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
    /// ABORTED, INTERNAL, UNKNOWN, CANCELLED). NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT
    /// and the like are the user's to fix and are not retried.
    pub fn is_retryable(&self) -> bool {
        match self {
            PubSubError::Rpc(e) => is_transient(e),
            PubSubError::Publish(PublishError::Rpc(e)) => is_transient(e),
            // Publishing resumes once the key is resumed (the sink does that before retrying).
            PubSubError::Publish(PublishError::OrderingKeyPaused) => true,
            PubSubError::Publish(_) => false,
            PubSubError::Client(_) | PubSubError::Name(_) => false,
        }
    }

    /// The gRPC status code, when the service answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            PubSubError::Rpc(e) => e.status().map(|s| s.code),
            PubSubError::Publish(PublishError::Rpc(e)) => e.status().map(|s| s.code),
            _ => None,
        }
    }
}

impl From<google_cloud_gax::error::Error> for PubSubError {
    fn from(e: google_cloud_gax::error::Error) -> Self {
        PubSubError::Rpc(e)
    }
}

impl From<google_cloud_gax::client_builder::Error> for PubSubError {
    fn from(e: google_cloud_gax::client_builder::Error) -> Self {
        PubSubError::Client(e)
    }
}

/// See [`PubSubError::is_retryable`].
pub fn is_transient(e: &google_cloud_gax::error::Error) -> bool {
    if let Some(status) = e.status() {
        return matches!(
            status.code,
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Aborted
                | Code::Internal
                | Code::Unknown
                | Code::Cancelled
        );
    }
    e.is_timeout() || e.is_io() || e.is_connect() || e.is_transport() || e.is_exhausted()
}

/// Where clients connect: the emulator when `PUBSUB_EMULATOR_HOST` is set, else Google.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// `http://HOST:PORT` of the emulator.
    pub emulator: Option<String>,
    /// `GOOGLE_CLOUD_PROJECT`: the project of bare topic and subscription ids.
    pub project: Option<String>,
}

impl Connection {
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Connection {
            emulator: var("PUBSUB_EMULATOR_HOST").map(|h| {
                if h.starts_with("http://") || h.starts_with("https://") {
                    h
                } else {
                    format!("http://{h}")
                }
            }),
            project: var("GOOGLE_CLOUD_PROJECT"),
        }
    }

    fn credentials(&self) -> Option<Credentials> {
        self.emulator
            .as_ref()
            .map(|_| google_cloud_auth::credentials::anonymous::Builder::new().build())
    }

    /// `projects/P/topics/T` for a full name or a bare id in the default project.
    ///
    /// # Errors
    /// A bare id without `GOOGLE_CLOUD_PROJECT`.
    pub fn topic_path(&self, name: &str) -> Result<String, PubSubError> {
        self.path(name, "topics")
    }

    /// `projects/P/subscriptions/S` for a full name or a bare id in the default project.
    ///
    /// # Errors
    /// A bare id without `GOOGLE_CLOUD_PROJECT`.
    pub fn subscription_path(&self, name: &str) -> Result<String, PubSubError> {
        self.path(name, "subscriptions")
    }

    fn path(&self, name: &str, kind: &str) -> Result<String, PubSubError> {
        if name.starts_with("projects/") {
            let ok = name.split('/').count() == 4 && name.split('/').nth(2) == Some(kind);
            return if ok {
                Ok(name.to_string())
            } else {
                Err(PubSubError::Name(format!(
                    "`{name}` is not a {} name (`projects/PROJECT/{kind}/ID`)",
                    &kind[..kind.len() - 1]
                )))
            };
        }
        match &self.project {
            Some(p) => Ok(format!("projects/{p}/{kind}/{name}")),
            None => Err(PubSubError::Name(format!(
                "`{name}` names no project: write `projects/PROJECT/{kind}/{name}` or set GOOGLE_CLOUD_PROJECT"
            ))),
        }
    }

    /// # Errors
    /// When the client cannot be created.
    pub async fn subscriber(&self) -> Result<Subscriber, PubSubError> {
        let mut b = Subscriber::builder();
        if let (Some(e), Some(c)) = (&self.emulator, self.credentials()) {
            b = b.with_endpoint(e.clone()).with_credentials(c);
        }
        Ok(b.build().await?)
    }

    /// A publisher to `topic` (a full name) that sends what it has every `delay` or
    /// `max_messages` messages.
    ///
    /// # Errors
    /// When the client cannot be created.
    pub async fn publisher(
        &self,
        topic: &str,
        max_messages: u32,
        delay: std::time::Duration,
    ) -> Result<Publisher, PubSubError> {
        // No retries inside the client (its default retries silently for 10 minutes): the
        // sink's own bounded loop retries, logging each attempt (`sink::publish_all`).
        let mut b = Publisher::builder(topic.to_string())
            .set_message_count_threshold(max_messages)
            .set_delay_threshold(delay)
            .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry);
        if let (Some(e), Some(c)) = (&self.emulator, self.credentials()) {
            b = b.with_endpoint(e.clone()).with_credentials(c);
        }
        Ok(b.build().await?)
    }

    /// # Errors
    /// When the client cannot be created.
    pub async fn topic_admin(&self) -> Result<TopicAdmin, PubSubError> {
        let mut b = TopicAdmin::builder();
        if let (Some(e), Some(c)) = (&self.emulator, self.credentials()) {
            b = b.with_endpoint(e.clone()).with_credentials(c);
        }
        Ok(b.build().await?)
    }

    /// # Errors
    /// When the client cannot be created.
    pub async fn subscription_admin(&self) -> Result<SubscriptionAdmin, PubSubError> {
        let mut b = SubscriptionAdmin::builder();
        if let (Some(e), Some(c)) = (&self.emulator, self.credentials()) {
            b = b.with_endpoint(e.clone()).with_credentials(c);
        }
        Ok(b.build().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_in_the_default_project() {
        let c = Connection {
            emulator: None,
            project: Some("p".into()),
        };
        assert_eq!(c.topic_path("t-1").unwrap(), "projects/p/topics/t-1");
        assert_eq!(
            c.subscription_path("projects/q/subscriptions/s").unwrap(),
            "projects/q/subscriptions/s"
        );
        assert!(c.topic_path("projects/q/subscriptions/s").is_err());
        let none = Connection::default();
        assert!(!none.topic_path("t").unwrap_err().is_retryable());
    }
}
