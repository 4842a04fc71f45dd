//! The answer forms the verifier once missed (issue 33): mixed numbers, repeating decimals,
//! scientific notation, vulgar fractions, styling, multiple choice, bases, unclosed boxes and
//! long or deep answers. Each rule with its hits and its traps.

use super::tests::{no, yes};
use super::*;

#[test]
fn mixed_numbers_are_sums_never_products() {
    yes(&[
        ("\\boxed{3\\frac{1}{2}}", "\\frac{7}{2}"),
        ("\\boxed{3.5}", "3\\frac{1}{2}"),
        ("\\boxed{-1\\frac{1}{2}}", "-\\frac{3}{2}"),
        ("\\boxed{2 \\tfrac{3}{4}}", "2.75"),
        ("\\boxed{2\\dfrac34}", "11/4"),
        ("3 1/2", "3.5"),
        ("\\boxed{3 1/2}", "7/2"),
        ("\\boxed{x = 2\\frac{1}{3}}", "7/3"),
        ("\\boxed{(1\\frac12, 2)}", "(1.5, 2)"),
        ("\\boxed{1\\frac{1}{2}\\text{ hours}}", "1.5"),
    ]);
    no(&[
        // Read as products they would be 3/2 and -1/2.
        ("\\boxed{\\frac{3}{2}}", "3\\frac{1}{2}"),
        ("\\boxed{-\\frac{1}{2}}", "-1\\frac{1}{2}"),
        ("\\boxed{3/2}", "3 1/2"),
    ]);
    // Next to an operator or a variable, or improper: a product, as written.
    yes(&[
        ("\\boxed{1 + 2\\frac{1}{2}}", "2"),
        ("\\boxed{2\\frac{1}{2}x}", "x"),
        ("\\boxed{2\\frac{1}{2}^2}", "\\frac12"),
        ("\\boxed{2\\cdot\\frac{1}{2}}", "1"),
        ("\\boxed{2\\frac{3}{2}}", "3"),
        ("\\boxed{2\\frac{\\pi}{2}}", "\\pi"),
    ]);
    no(&[
        ("\\boxed{1 + 2\\frac{1}{2}}", "3.5"),
        ("\\boxed{2\\frac{1}{2}x}", "\\frac{5x}{2}"),
        ("\\boxed{2\\frac{3}{2}}", "3.5"),
    ]);
}

#[test]
fn repeating_decimals_are_exact_fractions() {
    yes(&[
        ("\\boxed{0.\\overline{3}}", "\\frac13"),
        ("\\boxed{0.1\\overline{6}}", "\\frac16"),
        ("\\boxed{0.\\overline{142857}}", "\\frac17"),
        ("\\boxed{1.\\bar{2}}", "\\frac{11}{9}"),
        ("\\boxed{0.\\dot{3}}", "1/3"),
        ("\\boxed{0.\\dot{1}4285\\dot{7}}", "1/7"),
        ("\\boxed{-0.\\overline{6}}", "-2/3"),
        ("\\boxed{0.999\\ldots}", "1"),
        ("\\boxed{0.333\\dots}", "\\frac{1}{3}"),
        ("0.1666...", "1/6"),
        ("\\boxed{0.3636…}", "4/11"),
    ]);
    no(&[
        // `\overline` used to be unwrapped: 0.\overline{3} read as 0.3.
        ("\\boxed{0.\\overline{3}}", "0.3"),
        ("\\boxed{0.3}", "0.\\overline{3}"),
        ("\\boxed{0.\\overline{36}}", "0.36"),
        ("\\boxed{0.1\\overline{6}}", "\\frac{16}{99}"),
        // No block written twice: not a repeating decimal.
        ("\\boxed{3.14159\\ldots}", "\\frac{314159}{100000}"),
    ]);
    // A bar over letters is a segment or a conjugate, as before.
    yes(&[
        ("\\boxed{\\overline{AB}}", "AB"),
        ("\\boxed{\\bar{x}}", "x"),
    ]);
    no(&[("\\boxed{1, 2, \\ldots}", "1")]);
}

#[test]
fn scientific_notation_is_a_power_of_ten() {
    yes(&[
        ("\\boxed{1.2e3}", "1200"),
        ("\\boxed{1.2E3}", "1200"),
        ("\\boxed{1.2\\times10^{3}}", "1200"),
        ("\\boxed{1.2 \\cdot 10^3}", "1200"),
        ("\\boxed{2.5e-3}", "0.0025"),
        ("\\boxed{1e-6}", "10^{-6}"),
        ("\\boxed{3e+2}", "300"),
        ("\\boxed{6.02e23}", "6.02\\times 10^{23}"),
    ]);
    no(&[
        ("\\boxed{1.2e3}", "1.2"),
        ("\\boxed{1.2e3}", "3.6e"),
        ("\\boxed{2.5e-3}", "2.5e"),
    ]);
    // Euler's number stays Euler's number.
    yes(&[
        ("\\boxed{2e}", "2e"),
        ("\\boxed{2e-1}", "2e - 1"),
        ("\\boxed{3e^x}", "3e^{x}"),
    ]);
    no(&[("\\boxed{2e-1}", "0.2"), ("\\boxed{2e}", "2")]);
}

#[test]
fn vulgar_fractions_are_fractions() {
    yes(&[
        ("\\boxed{½}", "\\frac12"),
        ("\\boxed{¾}", "0.75"),
        ("\\boxed{3½}", "3.5"),
        ("\\boxed{2⅓}", "7/3"),
        ("\\boxed{1⁄8}", "0.125"),
    ]);
    no(&[("\\boxed{3½}", "1.5"), ("\\boxed{¼}", "4")]);
}

#[test]
fn styling_is_dropped_and_choices_compare_by_letter() {
    yes(&[
        ("\\boxed{\\color{red}{5}}", "5"),
        ("\\boxed{\\color{red}5}", "5"),
        ("\\boxed{\\textcolor{blue}{\\frac{1}{2}}}", "0.5"),
        ("\\boxed{\\color[rgb]{1,0,0}{12}}", "12"),
        ("\\boxed{\\colorbox{yellow}{7}}", "7"),
        ("\\boxed{\\boldsymbol{12}}", "12"),
        ("\\boxed{\\pmb{x+1}}", "x+1"),
        ("\\boxed{(C) 12}", "C"),
        ("\\boxed{\\text{(C)}}", "C"),
        ("\\boxed{\\textbf{(C)}\\ 12}", "C"),
        ("\\boxed{C) 12}", "(C)"),
        ("\\boxed{C}", "\\text{(C) } 12"),
    ]);
    no(&[
        ("\\boxed{\\color{red}{5}}", "6"),
        // A different letter is wrong whatever its text.
        ("\\boxed{(D) 12}", "C"),
        ("\\boxed{\\text{(B)}}", "(C) 12"),
        ("\\boxed{(A)}", "B"),
        // Not choices: a pair, a lower-case variable.
        ("\\boxed{(A, B)}", "A"),
        ("\\boxed{(c) 12}", "C"),
    ]);
}

#[test]
fn a_base_in_the_gold_asks_for_digits_in_that_base() {
    yes(&[
        ("\\boxed{101_2}", "101_2"),
        ("\\boxed{101}", "101_2"),
        ("\\boxed{101_{2}}", "101_2"),
        ("\\boxed{1234_5}", "1234_5"),
        ("\\boxed{1234}", "1234_{5}"),
        // A base in the prediction alone is a value.
        ("\\boxed{204_5}", "54"),
        ("\\boxed{101_2 + 1}", "6"),
    ]);
    no(&[
        // The same value in base ten is not the base-2 answer asked for.
        ("\\boxed{5}", "101_2"),
        ("\\boxed{194}", "1234_5"),
        ("\\boxed{102}", "101_2"),
        ("\\boxed{110_2}", "101_2"),
        ("\\boxed{204_5}", "55"),
    ]);
    // A subscript on a letter stays an index.
    yes(&[("\\boxed{x_1 + x_2}", "x_2 + x_1")]);
    no(&[("\\boxed{x_1}", "x_2")]);
}

#[test]
fn an_unclosed_box_is_malformed_with_its_reason() {
    let cfg = RewardConfig::authors_legacy();
    let v = score("so the answer is \\boxed{\\frac{1}{2}", "\\frac12", &cfg);
    assert!(!v.equivalent);
    assert_eq!(v.extracted, None);
    assert_eq!(v.reward, cfg.unboxed);
    let why = v.reason.unwrap_or_default();
    assert!(
        why.contains("\\boxed") && why.contains("never closed"),
        "{why}"
    );
    // An earlier closed box does not rescue a last one that was cut off.
    let v = score("\\boxed{1} then \\boxed{2", "2", &cfg);
    assert!(v.reason.is_some() && !v.equivalent);
    // A closed box has no reason.
    let v = score("\\boxed{\\frac{1}{2}}", "\\frac12", &cfg);
    assert!(v.equivalent && v.reason.is_none());
}

/// Run `f` on a thread with the stack a test thread has (2 MiB): deep input must fit in it.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("the verifier overflowed or panicked on a 2 MiB stack");
}

#[test]
fn long_and_deep_answers_parse_within_a_small_stack() {
    on_small_stack(|| {
        // Longer than the old 4096-byte cap: identical, and equal after normalisation.
        let long: String = (1..=1500).map(|i| format!("{i}, ")).collect::<String>() + "0";
        assert!(long.len() > 4096);
        assert!(verify(&format!("\\boxed{{{long}}}"), &long));
        assert!(verify(
            &format!("\\boxed{{{}}}", long.replace(", ", ",")),
            &long
        ));
        assert!(!verify(
            &format!("\\boxed{{{}}}", long.replace("1500", "1501")),
            &long
        ));
        // Hundreds of grouping braces and brackets.
        let braces = format!("{}7{}", "{".repeat(400), "}".repeat(400));
        yes(&[(&format!("\\boxed{{{braces}}}"), "7")]);
        let parens = format!("{}7{}", "(".repeat(300), ")".repeat(300));
        yes(&[(&format!("\\boxed{{{parens}}}"), "7")]);
        no(&[(&format!("\\boxed{{{parens}}}"), "8")]);
        // Dozens of nested fractions: 1/(1 + 1/(1 + ...)), 40 deep, a ratio of Fibonacci
        // numbers.
        let mut cf = "1".to_string();
        for _ in 0..40 {
            cf = format!("\\frac{{1}}{{1+{cf}}}");
        }
        let (mut a, mut b) = (1u64, 1u64);
        for _ in 0..40 {
            (a, b) = (b, a + b);
        }
        yes(&[(
            &format!("\\boxed{{{cf}}}"),
            &format!("\\frac{{{a}}}{{{b}}}"),
        )]);
        no(&[(
            &format!("\\boxed{{{cf}}}"),
            &format!("\\frac{{{a}}}{{{}}}", b + 1),
        )]);
        // At and past the depth limit: an answer, never an overflow.
        for depth in [100, 127, 128, 129, 200, 1000] {
            let nested = format!("{}1{}", "(1+".repeat(depth), ")".repeat(depth));
            let _ = verify(&format!("\\boxed{{{nested}}}"), &(depth + 1).to_string());
            let roots = format!("{}4", "\\sqrt".repeat(depth));
            let _ = verify(&format!("\\boxed{{{roots}}}"), "2");
            let text = format!("{}5{}", "\\text{".repeat(depth), "}".repeat(depth));
            let _ = verify(&format!("\\boxed{{{text}}}"), "5");
        }
        let ok = format!("{}1{}", "(1+".repeat(100), ")".repeat(100));
        yes(&[(&format!("\\boxed{{{ok}}}"), "101")]);
    });
}

#[test]
fn a_mention_of_the_box_command_is_no_box() {
    yes(&[
        ("\\boxed{5}. (We put answers in \\boxed.)", "5"),
        ("\\boxed{5} (answers go in \\boxed)", "5"),
        ("\\boxed{4} \\setlength{\\fboxsep}{2pt}", "4"),
        ("the answer is \\boxed 12", "12"),
    ]);
    no(&[("\\boxed{4} \\setlength{\\fboxsep}{2pt}", "2pt")]);
}
