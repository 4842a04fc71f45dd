//! Weight sync: after each update, make the rollout engine sample from the new policy.
//!
//! [`WeightSync::publish`] hands version `v` of the weights over; the embedded engine shares the
//! trainer's tensors in-process, so its sync only records the version.

use anyhow::Result;

use crate::policy::Policy;

/// Hands new weights to whatever generates rollouts.
pub trait WeightSync {
    /// Make `policy`'s current weights live as version `version`, and verify they are.
    fn publish(&mut self, policy: &Policy, version: u64) -> Result<()>;
    /// A short name for logs.
    fn name(&self) -> &'static str;
}

/// The embedded engine: the weights are shared in-process; nothing to transfer.
#[derive(Debug, Default)]
pub struct EmbeddedSync;

impl WeightSync for EmbeddedSync {
    fn publish(&mut self, _policy: &Policy, _version: u64) -> Result<()> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "embedded"
    }
}
