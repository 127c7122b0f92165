//! Kubernetes mode: which pods on this node to protect, and with which limits, from the
//! API server.
//!
//! - [`policy`]: the `ConnectionLimitPolicy` custom resource and how policies combine into each
//!   pod's limits (selection, the seeds' field names, conflicts).
//! - [`gateway`]: Gateway API policy attachment (`targetRefs`): a Gateway's pods, by the labels
//!   implementations put on them, and the port each listens on for a Gateway listener.
//! - [`pod`]: a pod as the agent needs it, from the API server's Pod.
//! - [`pod_netns`]: finding a pod's network namespace on the node (the one holding its IP).
//! - [`watch`]: the watches on Pods and policies, applied live through [`crate::netns`].
pub mod gateway;
pub mod pod;
pub mod pod_netns;
pub mod policy;
pub mod watch;
