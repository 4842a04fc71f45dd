//! cures: curriculum RL post-training for reasoning LLMs, following the CurES paper
//! (arXiv 2510.01037).
//!
//! The crate is organised along the path every rollout takes (see `docs/architecture.md`):
//! [`curriculum`] decides which prompts to roll out and how many times, rollouts are scored,
//! the policy is updated, and everything users analyse is written as CSV by [`metrics`].
//! Pure modules (curriculum, reward, advantages) never touch the network, the disk or tch.

pub mod backend;
pub mod bench;
pub mod config;
pub mod curriculum;
pub mod data;
pub mod eval;
pub mod fault;
pub mod metrics;
pub mod plot;
pub mod policy;
pub mod reward;
pub mod rollout;
pub mod run;
pub mod rundir;
pub mod sft;
pub mod simulate;
pub mod study;
pub mod sync;
pub mod testbed;
pub mod train;
