//! The integration tests: one test crate, so the suite links libtorch once (run one module with
//! `cargo test --test it MODULE::`, one test with `cargo test --test it MODULE::NAME`).
//!
//! Tests share this process. Rules that keep them independent:
//! - a test that starts an inference server or runs a long CPU job holds [`support::serial`]
//!   (one at a time: the suite's memory stays bounded, and servers are not starved);
//! - no test calls `std::env::set_var`: a variable a test needs set is given to a child run of
//!   that test alone ([`support::rerun_with_env`]);
//! - no test seeds or draws from libtorch's global generator: random tensors come from
//!   [`support::Rng`] (ChaCha, per test);
//! - no test replaces the panic hook; [`support::serial`] survives a test that failed holding it.

mod support;

mod bench_cli;
mod cli_curriculum;
mod config_docs;
mod config_door;
mod convert_gguf;
mod curriculum_props;
mod data_formats;
mod eval_cli;
mod gpu_build;
mod plot_cli;
mod policy_chat;
mod policy_load;
mod policy_parity;
mod policy_smollm2;
mod repo_refs;
mod reward_cli;
mod reward_fuzz;
mod reward_peer;
mod run_cures;
mod run_e2e;
mod run_faults;
mod run_logs;
mod run_lora;
mod server_faults;
mod server_llama;
mod server_sglang;
mod server_vllm;
mod study_cli;
mod tch_smoke;
mod train_memory;
