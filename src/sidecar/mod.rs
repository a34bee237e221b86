//! Moving sidecar namespaces between Istio revisions (the secondary workflow). So far the
//! pure rules ([`revisions`]); the batched migration controller is still to come.

pub mod revisions;
