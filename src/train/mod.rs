//! The policy update: advantages (pure), the PPO + KL loss and the optimiser step (tch).

pub mod advantage;
pub mod loss;
pub mod optim;
pub mod plan;
pub mod trainer;

pub use advantage::{advantages, AdvantageKind, GroupRewards};
pub use loss::{ppo_loss, LossConfig};
pub use optim::{AdamW, AdamWParams, Precision};
pub use trainer::{
    gradient_class_stats, GradRollout, Reference, Sample, TrainConfig, Trainer, UpdateStats,
};
