//! Google Cloud Pub/Sub: `ReadFromPubSub` (streaming pull), `WriteToPubSub` and `sluice setup`'s
//! topics and subscriptions, on Google's official `google-cloud-pubsub` crate. See
//! `docs/pubsub.md`.

pub mod ack;
pub mod client;
pub mod config;
pub mod connectivity;
pub mod control;
pub mod decode;
pub mod ledger;
pub mod setup;
pub mod shard;
pub mod sink;
pub mod source;

pub use client::{Connection, PubSubError};
pub use sink::WriteToPubSub;
pub use source::ReadFromPubSub;
