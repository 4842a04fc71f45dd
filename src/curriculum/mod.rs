//! The CurES curriculum engine: posterior, prompt sampling, rollout allocation, strategies and
//! the iteration schedule (docs/algorithm.md §2–§7). Pure: no tch, no network, no disk.
//!
//! [`Curriculum`] is what the training loop and `cures simulate` drive:
//!
//! ```text
//! if cur.iteration_due() { let it = cur.begin_iteration(); /* N' rollouts of it.init_prompts */
//!                          cur.observe_init(&outcomes); }
//! let plan = cur.plan_step()?;          // sample m prompts from ρ, allocate n_i (Σ = N)
//! /* generate plan.groups[i].n completions of each prompt, score them */
//! cur.observe_step(&plan, &successes)?; // posterior update, ρ refresh
//! ```

pub mod allocation;
pub mod posterior;
pub mod sampler;
pub mod strategy;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::{Config, IterationMode, PosteriorUpdates, Replacement};
pub use allocation::{ClassStats, GradientStats};
pub use posterior::{BetaPrior, Posterior};
pub use sampler::{PromptSampler, SampleError, WeightRule};
pub use strategy::{Draw, Strategy};

/// Errors of the curriculum engine.
#[derive(Debug, thiserror::Error)]
pub enum CurriculumError {
    /// Drawing the batch failed.
    #[error("sampling: {0}")]
    Sample(#[from] SampleError),
    /// No feasible allocation.
    #[error("allocation: {0}")]
    Allocation(#[from] allocation::AllocationError),
    /// A call out of order or with mismatched data.
    #[error("{0}")]
    Usage(String),
}

/// One group of a step: a distinct prompt and its rollout count.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Global prompt id (row of the dataset).
    pub prompt: u32,
    /// Index in the current pool.
    pub local: u32,
    /// Draws merged into this group.
    pub multiplicity: u32,
    /// Rollouts to generate (may be 0 for GVM).
    pub n: u32,
    /// Accuracy estimate the allocation used (before this step's update).
    pub p_hat: f64,
    /// ρ of the prompt when drawn.
    pub rho: f64,
}

/// A step's batch.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPlan {
    /// Global step index (0-based).
    pub step: u64,
    /// Iteration index (0-based).
    pub iteration: u64,
    /// Distinct prompts with their rollout counts (Σ n = budget, unless σ = 0 prompts were
    /// skipped and the others could not take it all).
    pub groups: Vec<Group>,
    /// Groups that got no completions because their σ is 0 (`curriculum.zero_sigma = "skip"`).
    pub zero_sigma: u32,
    /// Draws requested (m).
    pub draws: usize,
    /// H(ρ) over the pool when drawing, nats.
    pub rho_entropy: f64,
    /// True when ρ had no mass (all weights 0) and the batch was drawn uniformly instead.
    pub uniform_fallback: bool,
}

impl StepPlan {
    /// Σ n_i.
    pub fn completions(&self) -> u64 {
        self.groups.iter().map(|g| u64::from(g.n)).sum()
    }
}

/// What an iteration needs before its first step.
#[derive(Debug, Clone, PartialEq)]
pub struct IterationStart {
    /// Iteration index (0-based).
    pub iteration: u64,
    /// Prompts that need N' pre-rollouts (empty when N' = 0).
    pub init_prompts: Vec<u32>,
    /// N'.
    pub init_rollouts: u32,
}

/// Everything needed to resume the engine exactly (serde).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurriculumState {
    /// Dataset size the state belongs to.
    pub dataset_len: usize,
    /// Posteriors.
    pub posterior: Posterior,
    /// Gradient class statistics.
    pub grads: GradientStats,
    /// Sampling RNG.
    pub rng: ChaCha8Rng,
    /// Iterations started.
    pub iterations_started: u64,
    /// Steps done in the current iteration.
    pub step_in_iteration: u64,
    /// Steps done in total.
    pub step: u64,
}

/// The engine. See the module docs for the call sequence.
#[derive(Debug, Clone)]
pub struct Curriculum {
    config: Config,
    strategy: Strategy,
    /// Dataset indices in subset order (subset t = `order[bounds[t]..bounds[t+1]]`).
    order: Vec<u32>,
    bounds: Vec<usize>,
    sampler: PromptSampler,
    state: CurriculumState,
}

/// Seed of the stream that shuffles the dataset into subsets (independent of sampling).
const SPLIT_STREAM: u64 = 0x5eed_5b17;
/// Seed of the sampling stream.
const SAMPLE_STREAM: u64 = 0x5a3b_1e00;

fn derive_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

impl Curriculum {
    /// A fresh engine over a dataset of `dataset_len` prompts. Validates the pool sizes.
    pub fn new(config: &Config, dataset_len: usize) -> Result<Self, crate::config::ConfigError> {
        config.validate()?;
        config.validate_pool(dataset_len)?;
        let c = &config.curriculum;
        let posterior = Posterior::new(
            dataset_len,
            BetaPrior {
                alpha: c.prior_alpha,
                beta: c.prior_beta,
            },
            c.forgetting,
        );
        let state = CurriculumState {
            dataset_len,
            posterior,
            grads: GradientStats::default(),
            rng: derive_rng(config.seed, SAMPLE_STREAM),
            iterations_started: 0,
            step_in_iteration: 0,
            step: 0,
        };
        Ok(Self::assemble(config, state))
    }

    /// Rebuild an engine from a saved state (same config and dataset). The sampler is rebuilt
    /// from the posterior, bit-identical to the one that was live when the state was saved.
    pub fn from_state(config: &Config, state: CurriculumState) -> Result<Self, CurriculumError> {
        if state.posterior.len() != state.dataset_len {
            return Err(CurriculumError::Usage(format!(
                "saved posterior has {} prompts but the state says {}",
                state.posterior.len(),
                state.dataset_len
            )));
        }
        config
            .validate()
            .and_then(|_| config.validate_pool(state.dataset_len))
            .map_err(|e| CurriculumError::Usage(e.to_string()))?;
        Ok(Self::assemble(config, state))
    }

    fn assemble(config: &Config, state: CurriculumState) -> Self {
        let strategy = Strategy::from_config(&config.curriculum, &config.batch);
        let n = state.dataset_len;
        let (order, bounds) = match config.iterations.mode {
            IterationMode::Streaming => ((0..n as u32).collect(), vec![0, n]),
            IterationMode::Subsets => {
                let mut order: Vec<u32> = (0..n as u32).collect();
                order.shuffle(&mut derive_rng(config.seed, SPLIT_STREAM));
                let t = config.iterations.subsets;
                let bounds = (0..=t).map(|k| k * n / t).collect();
                (order, bounds)
            }
        };
        let mut me = Self {
            config: config.clone(),
            strategy,
            order,
            bounds,
            sampler: PromptSampler::new(WeightRule::Uniform, Vec::new(), &state.posterior),
            state,
        };
        if me.state.iterations_started > 0 {
            me.rebuild_sampler();
        }
        me
    }

    fn current_subset(&self) -> usize {
        let t = self.bounds.len() - 1;
        (self.state.iterations_started.saturating_sub(1) % t as u64) as usize
    }

    fn pool_ids(&self) -> Vec<u32> {
        let k = self.current_subset();
        self.order[self.bounds[k]..self.bounds[k + 1]].to_vec()
    }

    fn rebuild_sampler(&mut self) {
        let pool = self.pool_ids();
        self.sampler = PromptSampler::new(self.strategy.weight_rule(), pool, &self.state.posterior);
    }

    /// The config the engine was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The strategy.
    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }

    /// The posterior store.
    pub fn posterior(&self) -> &Posterior {
        &self.state.posterior
    }

    /// The current pool's sampler (ρ).
    pub fn sampler(&self) -> &PromptSampler {
        &self.sampler
    }

    /// Gradient class statistics (for the `gradient` σ estimator).
    pub fn gradient_stats_mut(&mut self) -> &mut GradientStats {
        &mut self.state.grads
    }

    /// Steps done.
    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// Current iteration (0-based; 0 before the first starts).
    pub fn iteration(&self) -> u64 {
        self.state.iterations_started.saturating_sub(1)
    }

    /// A copy of the resumable state.
    pub fn state(&self) -> &CurriculumState {
        &self.state
    }

    /// True when the next step must be preceded by [`Curriculum::begin_iteration`]: before the
    /// first step, and (subsets mode) after every M steps.
    pub fn iteration_due(&self) -> bool {
        self.state.iterations_started == 0
            || (self.config.iterations.mode == IterationMode::Subsets
                && self.state.step_in_iteration >= self.config.iterations.steps as u64)
    }

    /// Start the next iteration: move to its subset, reset its posteriors (paper), and return
    /// the prompts needing N' pre-rollouts.
    pub fn begin_iteration(&mut self) -> IterationStart {
        self.state.iterations_started += 1;
        self.state.step_in_iteration = 0;
        let pool = self.pool_ids();
        if self.config.curriculum.reset_each_iteration {
            for &g in &pool {
                self.state.posterior.reset(g as usize);
            }
        }
        self.sampler = PromptSampler::new(
            self.strategy.weight_rule(),
            pool.clone(),
            &self.state.posterior,
        );
        let n_init = if self.strategy.uses_pre_rollouts() {
            self.config.iterations.init_rollouts as u32
        } else {
            0
        };
        IterationStart {
            iteration: self.iteration(),
            init_prompts: if n_init > 0 { pool } else { Vec::new() },
            init_rollouts: n_init,
        }
    }

    /// Fold the pre-rollouts' outcomes `(prompt, successes, rollouts)` into the posterior.
    /// Pre-rollouts are never trained on (Algorithm 1).
    pub fn observe_init(&mut self, outcomes: &[(u32, u32, u32)]) -> Result<(), CurriculumError> {
        for &(prompt, s, n) in outcomes {
            self.check_outcome(prompt, s, n)?;
            self.state.posterior.observe(prompt as usize, s, n);
        }
        self.rebuild_sampler();
        Ok(())
    }

    fn check_outcome(&self, prompt: u32, s: u32, n: u32) -> Result<(), CurriculumError> {
        if prompt as usize >= self.state.dataset_len {
            return Err(CurriculumError::Usage(format!(
                "prompt {prompt} is outside the dataset of {}",
                self.state.dataset_len
            )));
        }
        if s > n {
            return Err(CurriculumError::Usage(format!(
                "prompt {prompt}: {s} successes out of {n} rollouts"
            )));
        }
        Ok(())
    }

    /// Draw the step's batch from ρ and allocate its budget (Algorithm 1, lines 19–20).
    pub fn plan_step(&mut self) -> Result<StepPlan, CurriculumError> {
        if self.iteration_due() {
            return Err(CurriculumError::Usage(
                "plan_step called while an iteration is due: call begin_iteration first".into(),
            ));
        }
        let m = self.config.batch.prompts;
        let rho_entropy = self.sampler.entropy();
        let rng = &mut self.state.rng;
        let (mut locals, uniform_fallback) = match self.config.curriculum.sampling {
            Replacement::WithReplacement => self.sampler.draw_with_replacement(m, rng)?,
            Replacement::WithoutReplacement => {
                match self.sampler.draw_without_replacement(m, rng) {
                    Ok(d) => (d, false),
                    Err(SampleError::Exhausted { mut drawn, .. }) => {
                        // Fewer positive-weight prompts than m (Speed-RL late in an iteration):
                        // fill the batch uniformly from the rest of the pool.
                        let mut taken = vec![false; self.sampler.len()];
                        for &d in &drawn {
                            taken[d as usize] = true;
                        }
                        let mut rest: Vec<u32> = (0..self.sampler.len() as u32)
                            .filter(|&i| !taken[i as usize])
                            .collect();
                        rest.shuffle(rng);
                        drawn.extend(rest.into_iter().take(m - drawn.len()));
                        (drawn, true)
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        locals.sort_unstable();
        let mut draws: Vec<Draw> = Vec::with_capacity(locals.len());
        for &l in &locals {
            match draws.last_mut() {
                Some(d) if d.local == l => d.multiplicity += 1,
                _ => draws.push(Draw {
                    local: l,
                    prompt: self.sampler.prompt(l),
                    multiplicity: 1,
                }),
            }
        }
        let budget = self.config.batch.budget as u64;
        let alloc =
            self.strategy
                .allocate(&draws, &self.state.posterior, &self.state.grads, budget)?;
        let groups = draws
            .iter()
            .zip(alloc.n)
            .map(|(d, n)| Group {
                prompt: d.prompt,
                local: d.local,
                multiplicity: d.multiplicity,
                n,
                p_hat: self.strategy.p(&self.state.posterior, d.prompt as usize),
                rho: self.sampler.rho(d.local),
            })
            .collect();
        Ok(StepPlan {
            step: self.state.step,
            iteration: self.iteration(),
            groups,
            zero_sigma: alloc.zero_sigma,
            draws: m,
            rho_entropy,
            uniform_fallback,
        })
    }

    /// Fold the step's outcomes (`successes[i]` of `plan.groups[i].n`) into the posterior and
    /// refresh ρ for the touched prompts (O(m log N)).
    pub fn observe_step(
        &mut self,
        plan: &StepPlan,
        successes: &[u32],
    ) -> Result<(), CurriculumError> {
        if plan.step != self.state.step {
            return Err(CurriculumError::Usage(format!(
                "outcomes for step {} but the engine is at step {}",
                plan.step, self.state.step
            )));
        }
        if successes.len() != plan.groups.len() {
            return Err(CurriculumError::Usage(format!(
                "{} outcomes for {} groups",
                successes.len(),
                plan.groups.len()
            )));
        }
        for (g, &s) in plan.groups.iter().zip(successes) {
            self.check_outcome(g.prompt, s, g.n)?;
        }
        let every_step = self.config.curriculum.posterior_updates == PosteriorUpdates::EveryStep;
        let mut touched = Vec::with_capacity(plan.groups.len());
        for (g, &s) in plan.groups.iter().zip(successes) {
            self.state.posterior.record_sample(g.prompt as usize, g.n);
            if every_step && g.n > 0 {
                self.state.posterior.observe(g.prompt as usize, s, g.n);
                touched.push(g.local);
            }
        }
        self.sampler.update(&touched, &self.state.posterior);
        self.state.step += 1;
        self.state.step_in_iteration += 1;
        Ok(())
    }

    /// Per-prompt rows for the CSV export: (id, α, β, p̂, ρ, times sampled, last n). ρ is 0 for
    /// prompts outside the current pool.
    pub fn prompt_rows(&self) -> Vec<PromptRow> {
        let post = &self.state.posterior;
        let mut rho = vec![0.0; post.len()];
        for l in 0..self.sampler.len() as u32 {
            rho[self.sampler.prompt(l) as usize] = self.sampler.rho(l);
        }
        (0..post.len())
            .map(|i| PromptRow {
                id: i as u32,
                alpha: post.alpha(i),
                beta: post.beta(i),
                p_hat: post.mean(i),
                rho: rho[i],
                times_sampled: post.times_sampled(i),
                last_n: post.last_n(i),
            })
            .collect()
    }

    /// A uniform draw from the engine's RNG, for callers that need randomness tied to the
    /// curriculum stream (tests).
    pub fn random_u64(&mut self) -> u64 {
        self.state.rng.random()
    }
}

/// One row of the per-prompt CSV.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromptRow {
    /// Prompt id (dataset row).
    pub id: u32,
    /// α.
    pub alpha: f64,
    /// β.
    pub beta: f64,
    /// Posterior mean.
    pub p_hat: f64,
    /// Current sampling probability.
    pub rho: f64,
    /// Steps that drew the prompt.
    pub times_sampled: u32,
    /// Rollouts at the last draw.
    pub last_n: u32,
}
