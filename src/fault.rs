//! libtorch failures as errors, not panics.
//!
//! tch's plain methods (`forward`, `matmul`, `zeros`, `to_device`, ...) panic when libtorch
//! throws (an out-of-memory, a shape or device mismatch); only the `f_` forms return the error.
//! Rather than rewrite every call, each phase of a step runs in [`scope`], which catches the
//! panic — and a `TchError` returned through `?` — and turns it into one [`PhaseError`]: the
//! phase, the sizes it was working on, the first line of libtorch's message and the setting to
//! change. [`catch`] does the same where no phase is named (the step as a whole, a command).
//! The binary sets the panic hook once (`src/main.rs`): it stays quiet while [`guarded`], so
//! nothing is printed before the error is; the library never touches the hook.
//! `RUST_BACKTRACE=1` (or `--verbose`) adds libtorch's whole message to the error.
//!
//! A testing aid: `CURES_FAIL_PHASE=<phase>[@<step>]` (phase: `generate`, `logprobs`, `update`,
//! `checkpoint`, `publish`) makes the first libtorch call of that phase (at that step, else
//! anywhere) an allocation no machine can make, so libtorch itself fails with its out-of-memory
//! error, through the same path as a real one, whatever the machine's memory.

use std::any::Any;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Result};

/// A phase of a step, named as `CURES_FAIL_PHASE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Rollouts and evaluation in the embedded engine (stage 0, training, held-out).
    Generate,
    /// Log-probs without gradients: π_old, the reference, σ statistics.
    Logprobs,
    /// The policy update: forward, backward, optimiser.
    Update,
    /// Writing a checkpoint.
    Checkpoint,
    /// Publishing the weights to the rollout engine.
    Publish,
}

impl Phase {
    /// Every phase.
    pub const ALL: [Phase; 5] = [
        Phase::Generate,
        Phase::Logprobs,
        Phase::Update,
        Phase::Checkpoint,
        Phase::Publish,
    ];

    /// The phase's name.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Generate => "generate",
            Phase::Logprobs => "logprobs",
            Phase::Update => "update",
            Phase::Checkpoint => "checkpoint",
            Phase::Publish => "publish",
        }
    }

    /// What to change when the phase runs out of memory.
    fn oom_fix(self) -> &'static str {
        match self {
            Phase::Generate => {
                "lower rollout.max_batch (sequences the embedded engine decodes together; 0 = \
                 all of them) or rollout.max_tokens"
            }
            Phase::Logprobs => {
                "lower train.micro_batch_tokens (tokens per forward pass) or \
                 train.logits_chunk_tokens (tokens per LM-head chunk), or keep the reference \
                 elsewhere (train.ref_device = \"cpu\")"
            }
            Phase::Update => {
                "lower train.micro_batch_tokens or train.logits_chunk_tokens, or set \
                 train.activation_checkpointing = true"
            }
            Phase::Checkpoint => {
                "a checkpoint copies each tensor to host memory in model.save_dtype: free host \
                 memory, or set model.save_dtype = \"bf16\""
            }
            Phase::Publish => {
                "a publish copies each tensor to host memory in rollout.sync_dtype: free host \
                 memory, or set rollout.sync_dtype = \"bf16\""
            }
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A libtorch failure, as the user sees it.
#[derive(Debug)]
pub struct PhaseError {
    /// The phase it happened in (`None`: outside the named phases).
    pub phase: Option<Phase>,
    /// The step it happened at, when in a run.
    pub step: Option<u64>,
    /// The sizes the phase was working on, when known.
    pub detail: Option<String>,
    /// What the code around it was doing (error contexts), outermost first.
    pub context: Vec<String>,
    /// libtorch's whole message (its first line is the message; a C++ backtrace follows).
    pub message: String,
}

impl PhaseError {
    /// libtorch's message without its C++ backtrace.
    pub fn first_line(&self) -> &str {
        self.message.lines().next().unwrap_or("").trim()
    }

    /// Whether libtorch ran out of memory (host or device).
    pub fn out_of_memory(&self) -> bool {
        let m = self.message.to_ascii_lowercase();
        [
            "out of memory",
            "not enough memory",
            "can't allocate memory",
            "cannot allocate memory",
        ]
        .iter()
        .any(|k| m.contains(k))
    }
}

impl std::fmt::Display for PhaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.out_of_memory() {
            "out of memory"
        } else {
            "libtorch error"
        };
        match self.phase {
            Some(p) => write!(f, "{what} in phase `{p}`")?,
            None => write!(f, "{what}")?,
        }
        if let Some(s) = self.step {
            write!(f, " at step {s}")?;
        }
        if let Some(d) = self.detail.as_ref().filter(|d| !d.is_empty()) {
            write!(f, " ({d})")?;
        }
        for c in &self.context {
            write!(f, ": {c}")?;
        }
        write!(f, ": {}", self.first_line())?;
        match (self.out_of_memory(), self.phase) {
            (true, Some(p)) => write!(f, ". To fit: {}", p.oom_fix())?,
            (true, None) => write!(f, ". To fit: lower the batch sizes (see docs/gpu.md)")?,
            (false, _) => write!(
                f,
                ". Not a memory error: the sizes and the message say what did not fit together \
                 (a checkpoint that does not match its config.json, tensors on different devices)"
            )?,
        }
        if self.step.is_some() {
            write!(
                f,
                ". The run directory holds the last checkpoint: continue with `cures run \
                 --resume` (a resume may change the settings above)"
            )?;
        }
        if verbose() {
            write!(f, "\nlibtorch's whole message:\n{}", self.message)?;
        } else if self.message.lines().nth(1).is_some() {
            write!(f, " (RUST_BACKTRACE=1 shows libtorch's whole message)")?;
        }
        Ok(())
    }
}

impl std::error::Error for PhaseError {}

#[derive(Default)]
struct State {
    /// Open scopes, innermost last, each with its detail.
    scopes: Vec<(Option<Phase>, Option<String>)>,
    step: Option<u64>,
    /// Where the last panic on this thread happened (set by the binary's hook).
    panic_at: Option<String>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

static VERBOSE: AtomicBool = AtomicBool::new(false);
static INJECTED: AtomicBool = AtomicBool::new(false);

/// Add libtorch's whole message to errors (`--verbose`; `RUST_BACKTRACE` does it too).
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::SeqCst);
}

/// Whether errors carry libtorch's whole message.
pub fn verbose() -> bool {
    VERBOSE.load(Ordering::SeqCst)
        || std::env::var("RUST_BACKTRACE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether this thread runs inside [`scope`] or [`catch`]: a panic here becomes an error, so
/// the panic hook need not print it.
pub fn guarded() -> bool {
    STATE.with(|s| !s.borrow().scopes.is_empty())
}

/// For the panic hook: where the panic happened (kept for the error of a panic that is not a
/// libtorch failure, i.e. a bug).
pub fn note_panic_location(at: String) {
    STATE.with(|s| s.borrow_mut().panic_at = Some(at));
}

/// The step this thread works on (errors name it; `CURES_FAIL_PHASE=phase@step` matches it).
pub fn set_step(step: Option<u64>) {
    STATE.with(|s| s.borrow_mut().step = step);
}

/// The sizes the innermost scope is working on, for its error.
pub fn detail(d: impl FnOnce() -> String) {
    STATE.with(|s| {
        if let Some(last) = s.borrow_mut().scopes.last_mut() {
            last.1 = Some(d());
        }
    });
}

/// Run `f` as `phase`, working on `what` (the sizes, for the error; [`detail`] refines it as
/// the phase goes): a libtorch failure inside (a panic of a tch call, or a `TchError` in the
/// returned error) comes back as one [`PhaseError`].
pub fn scope<T>(
    phase: Phase,
    what: impl FnOnce() -> String,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    run_guarded(Some(phase), || {
        detail(what);
        inject(phase)?;
        f()
    })
}

/// [`scope`] without a phase: for a whole step or command, so that a libtorch failure outside
/// the named phases is an error too.
pub fn catch<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    run_guarded(None, f)
}

fn run_guarded<T>(phase: Option<Phase>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    STATE.with(|s| s.borrow_mut().scopes.push((phase, None)));
    let r = catch_unwind(AssertUnwindSafe(f));
    let (detail, step, at) = STATE.with(|s| {
        let mut s = s.borrow_mut();
        let (_, d) = s.scopes.pop().unwrap_or((None, None));
        (d, s.step, s.panic_at.take())
    });
    let made = |message: String, context: Vec<String>| PhaseError {
        phase,
        step,
        detail: detail.clone(),
        context,
        message,
    };
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            if e.chain().any(|c| c.downcast_ref::<PhaseError>().is_some()) {
                return Err(e);
            }
            let Some(tch) = e.chain().find_map(|c| c.downcast_ref::<tch::TchError>()) else {
                return Err(e);
            };
            let whole = tch.to_string();
            let message = match tch {
                tch::TchError::Torch(m) => m.clone(),
                other => other.to_string(),
            };
            let context = e
                .chain()
                .map(|c| c.to_string())
                .filter(|c| *c != whole)
                .collect();
            Err(made(message, context).into())
        }
        Err(payload) => {
            let text = payload_text(payload.as_ref());
            match libtorch_message(&text) {
                Some(message) => Err(made(message, Vec::new()).into()),
                None => {
                    let at = at.map(|a| format!(" at {a}")).unwrap_or_default();
                    let wh = phase
                        .map(|p| format!(" in phase `{p}`"))
                        .unwrap_or_default();
                    Err(anyhow!(
                        "internal error{wh}{at}: {text} (a bug in cures: please report it with \
                         this message; RUST_BACKTRACE=1 shows where)"
                    ))
                }
            }
        }
    }
}

fn payload_text(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "a panic without a message".into()
    }
}

/// libtorch's message inside a tch panic (`called Result::unwrap() on an Err value:
/// Torch("...")`, the message escaped as Rust's `Debug` writes it).
fn libtorch_message(panic: &str) -> Option<String> {
    let start = panic.find("Torch(\"")? + "Torch(\"".len();
    let body = &panic[start..];
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('0') => out.push('\0'),
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    Some(out)
}

/// An injected failure: the phase, and the step (any when `None`).
type Injection = Option<(Phase, Option<u64>)>;

/// `CURES_FAIL_PHASE`, parsed once.
fn injection() -> Result<Injection> {
    static SPEC: OnceLock<Result<Injection, String>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let Ok(v) = std::env::var("CURES_FAIL_PHASE") else {
            return Ok(None);
        };
        let (name, step) = match v.split_once('@') {
            Some((n, s)) => (n, Some(s)),
            None => (v.as_str(), None),
        };
        let names: Vec<&str> = Phase::ALL.iter().map(|p| p.name()).collect();
        let phase = Phase::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                format!("CURES_FAIL_PHASE={v}: unknown phase {name:?}, expected one of {names:?}")
            })?;
        let step = step
            .map(|s| {
                s.parse::<u64>()
                    .map_err(|_| format!("CURES_FAIL_PHASE={v}: {s:?} is not a step number"))
            })
            .transpose()?;
        Ok(Some((phase, step)))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// The injected failure: at the first matching phase, a real libtorch allocation of 1 PiB
/// (beyond any machine's address space), through the panicking tch call a real one would be.
fn inject(phase: Phase) -> Result<()> {
    let Some((want, at)) = injection()? else {
        return Ok(());
    };
    let step = STATE.with(|s| s.borrow().step);
    if want != phase || (at.is_some() && at != step) {
        return Ok(());
    }
    if INJECTED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let t = tch::Tensor::empty([1i64 << 48], (tch::Kind::Float, tch::Device::Cpu));
    bail!(
        "CURES_FAIL_PHASE={}: libtorch allocated {} elements instead of failing",
        phase,
        t.numel()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tch_panic_becomes_a_phase_error_with_the_first_line() {
        let e = scope(
            Phase::Update,
            || "a step".into(),
            || {
                detail(|| "micro-batch of 2 sequences".into());
                let a = tch::Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu));
                let b = tch::Tensor::zeros([4, 5], (tch::Kind::Float, tch::Device::Cpu));
                Ok(a.matmul(&b))
            },
        )
        .unwrap_err();
        let pe = e.downcast_ref::<PhaseError>().expect("a PhaseError");
        assert_eq!(pe.phase, Some(Phase::Update));
        assert!(!pe.out_of_memory());
        // The error proper, without what RUST_BACKTRACE adds after it.
        let all = format!("{e:#}");
        let s = all.split("\nlibtorch's whole message").next().unwrap_or("");
        assert!(
            s.starts_with("libtorch error in phase `update` (micro-batch of 2 sequences): "),
            "{s}"
        );
        assert!(s.contains("cannot be multiplied"), "{s}");
        assert!(
            !s.contains("Exception raised from"),
            "no C++ backtrace: {s}"
        );
        assert!(!guarded(), "the scope is closed");
    }

    #[test]
    fn a_returned_tch_error_keeps_its_context_and_nested_scopes_report_once() {
        let e = catch(|| {
            scope(Phase::Checkpoint, String::new, || {
                let t = tch::Tensor::f_empty([1i64 << 48], (tch::Kind::Float, tch::Device::Cpu))
                    .map_err(anyhow::Error::from);
                let t = anyhow::Context::context(t, "cannot copy model.norm.weight")?;
                Ok(t.numel())
            })
        })
        .unwrap_err();
        let pe = e.downcast_ref::<PhaseError>().expect("a PhaseError");
        assert_eq!(
            pe.phase,
            Some(Phase::Checkpoint),
            "the inner scope names it"
        );
        assert!(pe.out_of_memory(), "{}", pe.message);
        let s = e.to_string();
        assert!(
            s.starts_with("out of memory in phase `checkpoint`: cannot copy model.norm.weight: "),
            "{s}"
        );
        assert!(s.contains("model.save_dtype"), "{s}");
    }

    #[test]
    fn other_panics_are_internal_errors_and_messages_unescape() {
        let e = catch(|| -> Result<()> { panic!("index 3 out of range") }).unwrap_err();
        assert!(e.to_string().contains("internal error") && e.to_string().contains("index 3"));
        assert_eq!(
            libtorch_message(r#"called `Result::unwrap()` on an `Err` value: Torch("a \"b\"\nc")"#)
                .as_deref(),
            Some("a \"b\"\nc")
        );
        assert_eq!(libtorch_message("no torch here"), None);
    }
}
