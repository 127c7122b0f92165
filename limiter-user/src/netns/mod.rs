//! Where limits apply besides the agent's own network namespace: other network namespaces
//! named by path (a pod's, `--limit-in /run/netns/NAME 8000=5`).
//!
//! - [`path`]: a namespace by path, and running work inside it.
//! - [`enforcement`]: everything the agent does in one namespace: its own copy of the kernel
//!   object (maps, so counts and slots are the namespace's own; XDP on its interfaces; an
//!   accounting program that counts only that namespace's sockets), its limit table, its
//!   sweeper, its flood watch and its unbound-listener check.
//! - [`dispatch`]: how the agent's accounting program on the cgroup root hands a namespace's
//!   sockets to that namespace's copy (a tail call), so namespaces cost connections nothing.
//! - [`registry`]: every namespace configured, which are enforced now, and the watch that drops
//!   a namespace when its path goes and picks a new one up when the path comes back.
pub mod dispatch;
pub mod enforcement;
pub mod path;
pub mod registry;

pub use path::Netns;
pub use registry::Namespaces;
