//! The reward: is a model's final answer equivalent to the gold answer?
//!
//! Pure (no IO, no tch, no global mutable state) and bounded: every input, whatever its size or
//! content, returns in bounded time and memory without panicking.
//!
//! The path of one verification:
//! 1. [`extract`]: the answer span of the prediction (last `\boxed{..}` / `\fbox{..}`, else a
//!    GSM8K `#### 42` line, else the whole text when it is itself a bare answer; optional
//!    fallbacks for models that never box). Golds go through the same extraction with every
//!    fallback on (a gold may be a bare answer, `$..$`, a box or a whole solution).
//! 2. [`normalize`]: the MATH `strip_string` family (`\left`, `\dfrac`, units, `\%`, `^\circ`,
//!    thousands separators, ...), unicode, `\text{and}` as a list separator.
//! 3. [`parse`]: an expression tree (exact big rationals, + − × ÷ ^, `\frac`, `\sqrt`, functions,
//!    tuples, sets, intervals, unions, relations, matrices, text).
//! 4. [`equiv`]: structural comparison; numbers exactly (big rationals) where possible,
//!    numerically (relative `rel_tol`) otherwise; expressions with variables by evaluation at
//!    several deterministic points, exactly over the rationals where possible.
//!
//! Answer forms handled in the layer they belong to: repeating decimals (`0.\overline{3}`,
//! `0.\dot{3}`, `0.999\ldots`), vulgar fractions and colour commands in [`normalize`]; mixed
//! numbers (`3\frac12` is 7/2 when it is a whole item), scientific notation (`1.2e3`) and
//! redundant grouping (`{{{x}}}`) in [`parse`]; multiple-choice letters and a base asked for by
//! the gold (`101_2`) in [`equiv`]. A prediction whose last box is never closed is malformed
//! (the `unboxed` reward, with the reason in [`Verdict::reason`]). Limits are of resources:
//! 64 KiB answers, 16 KiB parsed, 128 nested brackets, all within a 2 MiB thread stack.

pub mod cli;
pub mod equiv;
pub mod eval;
pub mod extract;
mod lex;
pub mod normalize;
pub mod parse;

use serde::{Deserialize, Serialize};

/// `[reward]`: reward values and extraction fallbacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    /// Reward of an answer equivalent to the gold.
    pub correct: f64,
    /// Reward of an extracted answer that is not equivalent.
    pub wrong: f64,
    /// Reward when no answer could be extracted from the prediction.
    pub unboxed: f64,
    /// Fallback for models that never box: the answer after "final answer is ...".
    pub fallback_final_answer: bool,
    /// Fallback (after the others): the last number of the text.
    pub fallback_last_number: bool,
    /// Fallback (before the last number): the last `$..$` / `\(..\)` / `\[..\]` math span.
    pub fallback_last_latex: bool,
    /// Relative tolerance of numeric comparisons (exact rationals compare exactly first).
    pub rel_tol: f64,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            correct: 1.0,
            wrong: 0.0,
            unboxed: 0.0,
            fallback_final_answer: false,
            fallback_last_number: false,
            fallback_last_latex: false,
            rel_tol: 1e-9,
        }
    }
}

impl RewardConfig {
    /// The reward values of the CurES authors' older code: 1 / −0.5 / −1.
    pub fn authors_legacy() -> Self {
        Self {
            correct: 1.0,
            wrong: -0.5,
            unboxed: -1.0,
            ..Self::default()
        }
    }

    /// Every extraction fallback on (what Math-Verify does with its default targets).
    pub fn lenient() -> Self {
        Self {
            fallback_final_answer: true,
            fallback_last_number: true,
            fallback_last_latex: true,
            ..Self::default()
        }
    }

    /// Check ranges; the error names the key (`reward.<field>`) and the reason.
    pub fn validate(&self) -> Result<(), String> {
        for (k, v) in [
            ("reward.correct", self.correct),
            ("reward.wrong", self.wrong),
            ("reward.unboxed", self.unboxed),
        ] {
            // Beyond ±10^6 a reward only overflows the loss (its square, its advantage).
            if !(v.is_finite() && v.abs() <= 1e6) {
                return Err(format!("{k} must lie in [-1e6, 1e6], got {v:e}"));
            }
        }
        if !(self.rel_tol.is_finite() && self.rel_tol > 0.0) {
            return Err(format!("reward.rel_tol must be > 0, got {}", self.rel_tol));
        }
        if self.rel_tol >= 1.0 {
            return Err(format!("reward.rel_tol must be < 1, got {}", self.rel_tol));
        }
        Ok(())
    }
}

/// The outcome of one verification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// The prediction's answer is equivalent to the gold's.
    pub equivalent: bool,
    /// The answer extracted from the prediction (None: nothing extracted).
    pub extracted: Option<String>,
    /// The reward for it under the config (correct / wrong / unboxed).
    pub reward: f64,
    /// Why nothing was extracted, when the prediction is malformed (an unclosed box).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Score a prediction against a gold answer.
pub fn score(prediction: &str, gold: &str, cfg: &RewardConfig) -> Verdict {
    if let Some(why) = extract::malformed(prediction) {
        return Verdict {
            equivalent: false,
            extracted: None,
            reward: cfg.unboxed,
            reason: Some(why),
        };
    }
    let pred = extract::extract(prediction, &extract::Options::from_config(cfg));
    let Some(pred) = pred else {
        return Verdict {
            equivalent: false,
            extracted: None,
            reward: cfg.unboxed,
            reason: None,
        };
    };
    let equivalent = match extract::extract(gold, &extract::Options::gold()) {
        Some(g) => equiv::answers_equivalent(&g, &pred, cfg.rel_tol),
        None => false,
    };
    Verdict {
        equivalent,
        reward: if equivalent { cfg.correct } else { cfg.wrong },
        extracted: Some(pred.text),
        reason: None,
    }
}

/// [`score`] with the default config: is the prediction's answer equivalent to the gold?
pub fn verify(prediction: &str, gold: &str) -> bool {
    score(prediction, gold, &RewardConfig::default()).equivalent
}

/// The parsed forms of both sides (for `cures reward check`): (extracted, normalised, tree).
#[derive(Debug, Clone, Serialize)]
pub struct Explain {
    /// Gold: extracted span, normalised string, parsed tree (Debug form) or parse error.
    pub gold: Option<(String, String, String)>,
    /// Prediction: same.
    pub prediction: Option<(String, String, String)>,
    /// The verdict.
    pub verdict: Verdict,
}

/// Verify and show every intermediate form.
pub fn explain(prediction: &str, gold: &str, cfg: &RewardConfig) -> Explain {
    let show = |a: Option<extract::Answer>| {
        a.map(|a| {
            let n = normalize::normalize(&a.text, a.plain);
            let tree = match parse::parse(&n) {
                Ok(e) => format!("{e:?}"),
                Err(e) => format!("<not parsed: {e}>"),
            };
            (a.text, n, tree)
        })
    };
    Explain {
        gold: show(extract::extract(gold, &extract::Options::gold())),
        prediction: show(extract::extract(
            prediction,
            &extract::Options::from_config(cfg),
        )),
        verdict: score(prediction, gold, cfg),
    }
}

#[cfg(test)]
mod forms_tests;
#[cfg(test)]
mod tests;
