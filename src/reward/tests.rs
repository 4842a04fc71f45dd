//! Unit tests of the whole verifier: every rule, near misses, hostile inputs.

use proptest::prelude::*;

use super::*;

fn eq(pred: &str, gold: &str) -> bool {
    verify(pred, gold)
}

pub(super) fn yes(pairs: &[(&str, &str)]) {
    for (p, g) in pairs {
        assert!(
            eq(p, g),
            "expected {p:?} ≡ {g:?}: {:#?}",
            explain(p, g, &RewardConfig::default())
        );
    }
}

pub(super) fn no(pairs: &[(&str, &str)]) {
    for (p, g) in pairs {
        assert!(
            !eq(p, g),
            "expected {p:?} ≢ {g:?}: {:#?}",
            explain(p, g, &RewardConfig::default())
        );
    }
}

#[test]
fn extraction_box_hashes_bare() {
    yes(&[
        (
            "Long reasoning... so the answer is \\boxed{\\frac{1}{2}}.",
            "\\frac12",
        ),
        ("first \\boxed{3}, finally \\boxed{5}", "5"),
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt 2}{2}"),
        ("\\boxed 7", "7"),
        ("\\fbox{7}", "7"),
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        ("42", "42"),
        ("$\\frac{3}{4}$", "0.75"),
        ("\\boxed{1} and \\boxed{2}", "\\{1, 2\\}"),
        ("\\boxed{x}", "$\\boxed{x}$ gold with box"),
    ]);
    // No answer → not equivalent, and the unboxed reward.
    let v = score(
        "I think it is 5 but not sure",
        "5",
        &RewardConfig::default(),
    );
    assert!(!v.equivalent);
    assert_eq!(v.extracted, None);
    no(&[("\\boxed{}", "5"), ("", "5"), ("\\boxed{5}", "")]);
}

#[test]
fn fallbacks_off_by_default_and_on_when_asked() {
    let text = "We compute things. The final answer is 17. I hope it is correct.";
    assert!(!eq(text, "17"));
    let cfg = RewardConfig {
        fallback_final_answer: true,
        ..RewardConfig::default()
    };
    assert!(score(text, "17", &cfg).equivalent);
    let text = "Adding them gives 12 apples and then 30 more";
    assert!(!eq(text, "30"));
    let cfg = RewardConfig {
        fallback_last_number: true,
        ..RewardConfig::default()
    };
    assert!(score(text, "30", &cfg).equivalent);
    let cfg = RewardConfig {
        fallback_last_latex: true,
        ..RewardConfig::default()
    };
    assert!(score("So we get $x = 3$ here.", "3", &cfg).equivalent);
}

#[test]
fn reward_values() {
    let legacy = RewardConfig::authors_legacy();
    assert_eq!(score("\\boxed{2}", "2", &legacy).reward, 1.0);
    assert_eq!(score("\\boxed{3}", "2", &legacy).reward, -0.5);
    assert_eq!(score("no answer here at all", "2", &legacy).reward, -1.0);
    let d = RewardConfig::default();
    assert_eq!(score("\\boxed{3}", "2", &d).reward, 0.0);
    assert_eq!(score("nothing here to see", "2", &d).reward, 0.0);
    assert!(d.validate().is_ok());
    let bad = RewardConfig {
        rel_tol: 0.0,
        ..d.clone()
    };
    assert!(bad.validate().unwrap_err().contains("reward.rel_tol"));
    let bad = RewardConfig {
        wrong: f64::NAN,
        ..d
    };
    assert!(bad.validate().unwrap_err().contains("reward.wrong"));
}

#[test]
fn config_is_serde_with_unknown_fields_denied() {
    let c: RewardConfig = toml::from_str("correct = 2.0\nfallback_last_number = true").unwrap();
    assert_eq!(c.correct, 2.0);
    assert!(c.fallback_last_number);
    assert_eq!(c.rel_tol, 1e-9);
    assert!(toml::from_str::<RewardConfig>("corect = 1.0").is_err());
}

#[test]
fn normalisation_rules() {
    yes(&[
        ("\\boxed{\\left( \\frac{1}{2} \\right)}", "1/2"),
        ("\\boxed{\\dfrac{1}{2}}", "\\tfrac{1}{2}"),
        ("\\boxed{\\!1\\,000}", "1000"),
        ("\\boxed{90^\\circ}", "90"),
        ("\\boxed{90^{\\circ}}", "90°"),
        ("\\boxed{50\\%}", "50"),
        ("\\boxed{\\$5.50}", "5.5"),
        ("\\boxed{12\\text{ cm}}", "12"),
        ("\\boxed{12 \\mbox{ cm}^2}", "12"),
        ("\\boxed{5.}", "5"),
        ("\\boxed{x = 5}", "5"),
        ("\\boxed{0.5}", "\\frac12"),
        ("\\boxed{.5}", "0.5"),
        ("\\boxed{1,000}", "1000"),
        ("\\boxed{1{,}000{,}000}", "10^6"),
        ("\\boxed{−3}", "-3"),
        ("\\boxed{2 \\cdot 3}", "6"),
        ("\\boxed{2 \\times 3}", "6"),
        ("\\boxed{2π}", "2\\pi"),
        ("\\boxed{(-∞, 1)}", "(-\\infty, 1)"),
        ("\\boxed{\\text{Evelyn}}", "Evelyn"),
    ]);
}

#[test]
fn numbers_exact_and_numeric() {
    yes(&[
        ("\\boxed{\\frac{2}{4}}", "1/2"),
        ("\\boxed{0.0833333333333333}", "\\frac{1}{12}"),
        ("\\boxed{\\sqrt{17}}", "4.123105625617661"),
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
        ("\\boxed{\\sqrt[3]{27}}", "3"),
        ("\\boxed{2^{10}}", "1024"),
        ("\\boxed{\\frac{\\pi}{2}}", "\\pi/2"),
        ("\\boxed{e^{0}}", "1"),
        ("\\boxed{\\sin^2(1) + \\cos^2(1)}", "1"),
        ("\\boxed{5!}", "120"),
        ("\\boxed{\\binom{5}{2}}", "10"),
        ("\\boxed{|-3|}", "3"),
        ("\\boxed{\\log_2 8}", "3"),
        ("\\boxed{1.5 \\times 10^{3}}", "1500"),
    ]);
}

#[test]
fn near_misses_are_not_equivalent() {
    no(&[
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{3}"),
        ("\\boxed{2\\sqrt{2}}", "2\\sqrt{3}"),
        ("\\boxed{x = 5}", "x = -5"),
        ("\\boxed{-5}", "5"),
        ("\\boxed{0.333}", "1/3"),
        ("\\boxed{3.14}", "\\pi"),
        ("\\boxed{4\\sqrt{2}}", "4"),
        ("\\boxed{x+1}", "x+2"),
        ("\\boxed{x^2}", "x^3"),
        ("\\boxed{(1, 2)}", "(2, 1)"),
        ("\\boxed{[0, 1)}", "[0, 1]"),
        ("\\boxed{(0, 1]}", "[0, 1]"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2, 3\\}"),
        ("\\boxed{1 \\pm \\sqrt{2}}", "1 + \\sqrt{2}"),
        ("\\boxed{x < 5}", "x > 5"),
        ("\\boxed{x \\le 5}", "x < 5"),
        ("\\boxed{12:00}", "1:00"),
        ("\\boxed{\\text{(A)}}", "B"),
        ("\\boxed{odd}", "even"),
        ("\\boxed{1112122_3}", "1112112_3"),
        ("\\boxed{10^{1000}}", "10^{1000} + 1"),
        ("\\boxed{f(y)}", "f(x)"),
    ]);
}

#[test]
fn structures() {
    yes(&[
        ("\\boxed{(1, 4.5)}", "(1, \\frac{9}{2})"),
        ("\\boxed{[-1, 2)}", "[-1, 2)"),
        ("\\boxed{(1, \\infty)}", "(1, +\\infty)"),
        (
            "\\boxed{(-\\infty, 0) \\cup (1, 2]}",
            "(1,2] \\cup (-\\infty,0)",
        ),
        ("\\boxed{\\{3, 1, 2\\}}", "\\{1, 2, 3\\}"),
        ("\\boxed{3, 1, 2}", "1, 2, 3"),
        ("\\boxed{1 \\pm \\sqrt{19}}", "1+\\sqrt{19}, 1-\\sqrt{19}"),
        ("\\boxed{\\pm 2}", "\\{-2, 2\\}"),
        (
            "\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}}",
            "\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}",
        ),
        ("\\boxed{x \\in [2, 3]}", "[2,3]"),
        ("\\boxed{2 \\le x \\le 3}", "[2,3]"),
        ("\\boxed{x > 5}", "(5, \\infty)"),
        ("\\boxed{(p, q) = (3, 2)}", "(3, 2)"),
        ("\\boxed{6 \\text{ and } 8}", "6, 8"),
    ]);
    no(&[
        (
            "\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 3 & 5 \\end{pmatrix}}",
            "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
        ),
        ("\\boxed{1, 2}", "1, 2, 3"),
        ("\\boxed{(1,2,3)}", "(1,2)"),
    ]);
}

#[test]
fn equations_and_relations() {
    yes(&[
        ("\\boxed{x = 5}", "5"),
        ("\\boxed{5}", "x = 5"),
        ("\\boxed{y = 2x+1}", "2x + 1 = y"),
        ("\\boxed{y=-\\frac{1}{2}x+\\frac{3}{4}}", "2x+4y-3=0"),
        ("\\boxed{x \\geq 5}", "x >= 5"),
        ("\\boxed{5 \\ge x}", "x \\le 5"),
        ("\\boxed{-x > -1}", "x < 1"),
        ("\\boxed{x \\neq 3}", "x != 3"),
        ("\\boxed{x = 5+5+1 = 11}", "x = 11"),
        ("\\boxed{k = 1}", "1"),
    ]);
    no(&[
        ("\\boxed{x > -1}", "x < 1"),
        ("\\boxed{11a + c}", "7 = 11a + c"),
        ("\\boxed{0}", "a + 3z = 0"),
        ("\\boxed{y = 2x+1}", "y = 2x - 1"),
    ]);
}

#[test]
fn symbolic_expressions() {
    yes(&[
        ("\\boxed{\\frac{x}{7}+\\frac{2}{7}}", "\\frac{x+2}{7}"),
        ("\\boxed{(x+1)^2}", "x^2 + 2x + 1"),
        ("\\boxed{\\sec^2(y)}", "\\tan^2(y)+1"),
        ("\\boxed{2 \\sin b \\cos a}", "2\\cos a \\sin b"),
        ("\\boxed{\\frac{\\pi r}{h+r}}", "\\frac{r\\pi}{r+h}"),
        ("\\boxed{x^{2/3}}", "\\sqrt[3]{x}^2"),
    ]);
    no(&[
        ("\\boxed{x+1}", "x+2n+1"),
        ("\\boxed{(x+1)^2}", "x^2 + 1"),
        ("\\boxed{(+5)(b+2)}", "(a+5)(b+2)"),
    ]);
}

#[test]
fn percent_degrees_bases_choices_text() {
    yes(&[
        ("\\boxed{50\\%}", "50"),
        ("28 percent", "28\\%"),
        ("\\boxed{30^\\circ}", "30"),
        ("\\boxed{204_5}", "204_5"),
        ("\\boxed{204_5}", "54"),
        ("\\boxed{(A)}", "A"),
        ("\\boxed{\\text{(C)}}", "\\text{C}"),
        (
            "\\boxed{\\text{The midpoints form a regular hexagon}}",
            "the midpoints form a regular hexagon",
        ),
        ("\\boxed{ODD}", "odd"),
    ]);
    no(&[("\\boxed{\\text{E}}", "d"), ("AZYUK2A", "2")]);
}

#[test]
fn hostile_inputs_terminate() {
    let braces_open = "{".repeat(10 << 20);
    let braces_both = format!("{}{}", "{".repeat(5 << 20), "}".repeat(5 << 20));
    let boxed_open = format!("\\boxed{{{}", "{".repeat(10 << 20));
    let boxed_deep = format!("\\boxed{{{}1{}}}", "{".repeat(100_000), "}".repeat(100_000));
    let parens = format!("\\boxed{{{}1{}}}", "(".repeat(5000), ")".repeat(5000));
    let pow = "\\boxed{9^{9^{9^{9^{9^{9}}}}}}".to_string();
    let big = format!("\\boxed{{{}}}", "9".repeat(3000));
    let dollars = "$".repeat(1 << 20);
    for s in [
        &braces_open,
        &braces_both,
        &boxed_open,
        &boxed_deep,
        &parens,
        &pow,
        &big,
        &dollars,
    ] {
        // 5000 redundant parentheses (10 kB) are well-formed and within the limits: 1.
        assert_eq!(verify(s, "1"), s == &parens);
        // Deep `{{{1}}}` / `(((1)))` golds are 1; none of them is 2.
        assert!(!verify("\\boxed{2}", s));
    }
    assert!(verify("\\boxed{2^{10000}}", "2^{10000}"));
    assert!(!verify("\\boxed{2^{10000}}", "2^{10000}+1"));
    assert!(verify("\\boxed{10!}", "3628800"));
    assert!(!verify("\\boxed{1000000!}", "5"));
}

#[test]
fn send_sync() {
    fn f<T: Send + Sync>() {}
    f::<RewardConfig>();
    f::<Verdict>();
    let h: Vec<_> = (0..4)
        .map(|i| std::thread::spawn(move || verify(&format!("\\boxed{{{i}}}"), &i.to_string())))
        .collect();
    assert!(h.into_iter().all(|h| h.join().unwrap_or(false)));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn any_string_never_panics(p in any::<String>(), g in any::<String>()) {
        let _ = score(&p, &g, &RewardConfig::lenient());
        let _ = verify(&p, &g);
    }

    #[test]
    fn latexish_strings_never_panic(
        p in "[\\\\{}()\\[\\]0-9a-z^_+\\-*/=<>,.$ !|&:;%]{0,60}",
        g in "[\\\\{}()\\[\\]0-9a-z^_+\\-*/=<>,.$ !|&:;%]{0,60}",
    ) {
        let _ = score(&p, &g, &RewardConfig::lenient());
        let _ = score(&format!("\\boxed{{{p}}}"), &g, &RewardConfig::default());
    }

    #[test]
    fn boxed_integers_match_themselves(n in any::<i64>(), m in any::<i64>()) {
        let b = format!("\\boxed{{{n}}}");
        prop_assert!(verify(&b, &n.to_string()));
        prop_assert_eq!(verify(&b, &m.to_string()), n == m);
    }
}
