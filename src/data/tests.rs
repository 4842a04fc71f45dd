use super::*;

fn write(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join(name);
    std::fs::write(&p, text).expect("write");
    (dir, p)
}

#[test]
fn loads_jsonl_and_csv() {
    let (_d, p) = write(
        "a.jsonl",
        "{\"problem\": \"1+1\", \"answer\": \"2\"}\n\n{\"id\": \"x\", \"problem\": \"2+2\", \"answer\": 4, \"level\": 2}\n",
    );
    let e = load(&p).expect("load");
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].id, "0");
    assert_eq!(e[1].id, "x");
    assert_eq!(e[1].answer, "4");
    assert_eq!(e[1].level, Some(2));
    let (_d, p) = write("a.csv", "id,problem,answer\na,\"1+1, twice\",2\nb,3+3,6\n");
    let e = load(&p).expect("load");
    assert_eq!(e[0].problem, "1+1, twice");
    assert_eq!(e[1].id, "b");
}

#[test]
fn a_byte_order_mark_is_accepted() {
    let (_d, p) = write(
        "bom.jsonl",
        "\u{feff}{\"problem\": \"1+1\", \"answer\": \"2\"}\n",
    );
    assert_eq!(load(&p).expect("BOM").len(), 1);
    let (_d, p) = write("bom.csv", "\u{feff}problem,answer\n1+1,2\n");
    assert_eq!(load(&p).expect("BOM").len(), 1);
}

#[test]
fn bad_rows_name_file_line_and_field() {
    let (_d, p) = write(
        "bad.jsonl",
        "{\"problem\": \"1+1\", \"answer\": \"2\"}\n{\"problem\": \"2+2\", \"answer\": \"  \"}\n",
    );
    let e = format!("{:#}", load(&p).unwrap_err());
    assert!(e.contains("bad.jsonl:2") && e.contains("`answer`"), "{e}");
    let (_d, p) = write(
        "bad.jsonl",
        "{\"problem\": \"1+1\", \"answer\": \"2\"}\n{oops\n",
    );
    let e = format!("{:#}", load(&p).unwrap_err());
    assert!(
        e.contains("bad.jsonl:2") && e.contains("invalid JSON"),
        "{e}"
    );
    let (_d, p) = write(
        "bytes.jsonl",
        "{\"problem\": \"1+1\", \"answer\": \"2\"}\n{\"problem\": \"caf\u{e9}\", \"answer\": \"2\"}\n",
    );
    let mut raw = std::fs::read(&p).expect("read");
    let at = raw.iter().rposition(|&b| b == 0xC3).expect("é");
    raw[at] = 0xE9; // Latin-1 é
    std::fs::write(&p, &raw).expect("write");
    let e = format!("{:#}", load(&p).unwrap_err());
    assert!(
        e.contains("bytes.jsonl:2:17") && e.contains("invalid UTF-8"),
        "{e}"
    );
    let (_d, p) = write("e.jsonl", "\n");
    assert!(format!("{:#}", load(&p).unwrap_err()).contains("empty"));
    let (_d, p) = write("x.csv", "question,answer\n1,2\n");
    assert!(format!("{:#}", load(&p).unwrap_err()).contains("`problem`"));
}

#[test]
fn repeated_problems_are_dropped_and_counted_a_reused_id_is_an_error() {
    let (_d, p) = write(
        "dup.jsonl",
        "{\"problem\": \"1+1\", \"answer\": \"2\"}\n{\"problem\": \"2+2\", \"answer\": \"4\"}\n{\"problem\": \"1+1\", \"answer\": \"2\"}\n",
    );
    let l = load_with(&p, &Fields::default()).expect("repeats are not fatal");
    assert_eq!(l.examples.len(), 2);
    assert_eq!(l.duplicates, 1);
    assert_eq!(l.examples[1].problem, "2+2");
    let (_d, p) = write(
        "ids.jsonl",
        "{\"id\": \"a\", \"problem\": \"1+1\", \"answer\": \"2\"}\n{\"id\": \"a\", \"problem\": \"2+2\", \"answer\": \"4\"}\n",
    );
    let e = format!("{:#}", load(&p).unwrap_err());
    assert!(
        e.contains("ids.jsonl:2") && e.contains("id \"a\" is already used"),
        "{e}"
    );
}

/// The same three rows in every text format, MATH-style: `solution` with the answer boxed,
/// `"Level 3"` levels, integer and string fields.
const MATH_JSONL: &str = r#"{"problem": "What is $1+1$?", "level": "Level 1", "type": "Algebra", "solution": "We add: $1+1=\\boxed{2}$."}
{"problem": "Simplify $\\frac{4}{8}$.", "level": "Level 3", "type": "Algebra", "solution": "Divide: $\\boxed{\\frac{1}{2}}$ (not \\boxed{3} earlier; the last box counts: \\boxed{\\frac{1}{2}})"}
{"problem": "Find $x$.", "level": "Level ?", "type": "Algebra", "solution": "So $x = \\boxed{ 7 }$"}
"#;

fn math_fields() -> Fields {
    Fields {
        solution: "solution".into(),
        ..Fields::default()
    }
}

fn expect_math(l: &Loaded) {
    let e = &l.examples;
    assert_eq!(e.len(), 3);
    assert_eq!(e[0].answer, "2");
    assert_eq!(e[0].level, Some(1));
    assert_eq!(e[1].problem, "Simplify $\\frac{4}{8}$.");
    assert_eq!(e[1].answer, "\\frac{1}{2}");
    assert_eq!(e[1].level, Some(3));
    assert_eq!(e[2].answer, "7");
    assert_eq!(e[2].level, None, "Level ? is no level");
}

#[test]
fn math_style_rows_load_the_same_from_jsonl_a_json_array_and_csv() {
    let (_d, p) = write("math.jsonl", MATH_JSONL);
    let jsonl = load_with(&p, &math_fields()).expect("jsonl");
    expect_math(&jsonl);
    let rows: Vec<serde_json::Value> = MATH_JSONL
        .lines()
        .map(|l| serde_json::from_str(l).expect("row"))
        .collect();
    let (_d, p) = write(
        "math.json",
        &serde_json::to_string_pretty(&rows).expect("array"),
    );
    let array = load_with(&p, &math_fields()).expect("json array");
    assert_eq!(array.examples, jsonl.examples);
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["problem", "level", "type", "solution"])
        .expect("csv");
    for r in &rows {
        w.write_record(
            ["problem", "level", "type", "solution"].map(|k| r[k].as_str().unwrap_or("")),
        )
        .expect("csv");
    }
    let text = String::from_utf8(w.into_inner().expect("csv")).expect("utf8");
    let (_d, p) = write("math.csv", &text);
    let csv = load_with(&p, &math_fields()).expect("csv");
    assert_eq!(csv.examples, jsonl.examples);
    // Without the solution mapping there is no answer: an error naming the row and field.
    let e = format!("{:#}", load(&p).unwrap_err());
    assert!(
        e.contains("math.csv:2") && e.contains("`answer` is missing"),
        "{e}"
    );
    assert!(e.contains("3 such rows"), "{e}");
}

#[test]
fn a_bad_element_of_a_json_array_is_named_by_line() {
    let (_d, p) = write(
        "arr.json",
        "[\n  {\"problem\": \"1+1\", \"answer\": \"2\"},\n  {\"problem\": \"{[\", \"answer\": [1]}\n]\n",
    );
    let e = format!("{:#}", load(&p).unwrap_err());
    assert!(
        e.contains("arr.json:3") && e.contains("`answer` must be a string"),
        "{e}"
    );
    let (_d, p) = write("arr.json", "[{\"problem\": \"1+1\",\n \"answer\": }]");
    let e = format!("{:#}", load(&p).unwrap_err());
    assert!(
        e.contains("arr.json:2:") && e.contains("invalid JSON"),
        "{e}"
    );
}

#[test]
fn field_mapping_and_the_last_box() {
    let (_d, p) = write(
        "q.jsonl",
        "{\"question\": \"2*3\", \"final\": 6, \"uid\": 9, \"difficulty\": 4}\n",
    );
    let f = Fields {
        problem: "question".into(),
        answer: "final".into(),
        id: "uid".into(),
        level: "difficulty".into(),
        ..Fields::default()
    };
    let l = load_with(&p, &f).expect("mapped");
    assert_eq!(
        l.examples[0],
        Example {
            id: "9".into(),
            problem: "2*3".into(),
            answer: "6".into(),
            level: Some(4)
        }
    );
    let e = format!("{:#}", load(&p).unwrap_err());
    assert!(
        e.contains("`problem` is missing") && e.contains("\"question\""),
        "{e}"
    );
}

#[test]
fn the_last_box_of_a_solution_is_read_exactly() {
    let ok = |s: &str| last_boxed(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    assert_eq!(ok("a \\boxed{x^{2}} b").as_deref(), Some("x^{2}"));
    assert_eq!(ok("\\fbox{1} then \\boxed 5$").as_deref(), Some("5"));
    assert_eq!(ok("no box"), None);
    // A mention of the command is no box; a longer command is not \fbox.
    assert_eq!(
        ok("\\boxed{5}. (We put answers in \\boxed.)").as_deref(),
        Some("5")
    );
    assert_eq!(ok("\\boxed{5} (we use \\boxed)").as_deref(), Some("5"));
    assert_eq!(
        ok("\\boxed{4} \\setlength{\\fboxsep}{2pt}").as_deref(),
        Some("4")
    );
    assert_eq!(ok("\\fbox{7}").as_deref(), Some("7"));
    // Starred or never closed: refused with the reason.
    let e = last_boxed("\\boxed*{5}").unwrap_err();
    assert!(e.contains("starred"), "{e}");
    let e = last_boxed("\\boxed{3} and \\boxed*{5}").unwrap_err();
    assert!(e.contains("starred"), "{e}");
    let e = last_boxed("\\boxed{unclosed").unwrap_err();
    assert!(e.contains("never closed"), "{e}");
    // A row whose solution's box is starred is named with the reason.
    let (_d, p) = write(
        "sol.jsonl",
        "{\"problem\": \"a\", \"solution\": \"so \\\\boxed{2}\"}\n{\"problem\": \"b\", \"solution\": \"so \\\\boxed*{3}\"}\n",
    );
    let fields = Fields {
        solution: "solution".into(),
        ..Fields::default()
    };
    let e = format!("{:#}", load_with(&p, &fields).unwrap_err());
    assert!(
        e.contains("sol.jsonl:2 (field `solution`: its last box") && e.contains("starred"),
        "{e}"
    );
}

#[test]
fn a_dataset_folder_reads_the_splits_shards() {
    let d = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(d.path().join("data")).expect("data/");
    let rows = |a: usize, b: usize| -> String {
        (a..b)
            .map(|i| format!("{{\"problem\": \"{i}+1\", \"answer\": \"{}\"}}\n", i + 1))
            .collect()
    };
    std::fs::write(d.path().join("data/train-00000-of-00002.jsonl"), rows(0, 3)).expect("w");
    std::fs::write(d.path().join("data/train-00001-of-00002.jsonl"), rows(3, 5)).expect("w");
    std::fs::write(
        d.path().join("data/test-00000-of-00001.jsonl"),
        rows(10, 12),
    )
    .expect("w");
    std::fs::write(d.path().join("README.md"), "# card").expect("w");
    let train = load_with(d.path(), &Fields::default()).expect("train");
    assert_eq!(train.files.len(), 2);
    let problems: Vec<&str> = train.examples.iter().map(|e| e.problem.as_str()).collect();
    assert_eq!(problems, ["0+1", "1+1", "2+1", "3+1", "4+1"]);
    let test = load_with(
        d.path(),
        &Fields {
            split: "test".into(),
            ..Fields::default()
        },
    )
    .expect("test");
    assert_eq!(test.examples.len(), 2);
    let e = format!(
        "{:#}",
        load_with(
            d.path(),
            &Fields {
                split: "validation".into(),
                ..Fields::default()
            }
        )
        .unwrap_err()
    );
    assert!(
        e.contains("no \"validation\" split") && e.contains("the splits here: test, train"),
        "{e}"
    );
}

#[test]
fn splits_are_matched_by_exact_name() {
    for (file, split) in [
        ("train-00000-of-00003.parquet", "train"),
        ("train-00001-of-00002-5f3a9c.parquet", "train"),
        ("train.jsonl", "train"),
        ("train_sft-00000-of-00001.parquet", "train_sft"),
        ("training_extra-00000-of-00001.parquet", "training_extra"),
        ("validation-00000-of-00001.parquet", "validation"),
        ("test-extra-00000-of-00001.parquet", "test-extra"),
        ("x.tar.gz", "x"),
    ] {
        assert_eq!(split_of(file), split, "{file}");
    }
    let d = tempfile::tempdir().expect("tmp");
    let row = |p: &str| format!("{{\"problem\": \"{p}\", \"answer\": \"1\"}}\n");
    for (f, p) in [
        ("train-00000-of-00001.jsonl", "t"),
        ("train_sft-00000-of-00001.jsonl", "sft"),
        ("training_extra-00000-of-00001.jsonl", "extra"),
        ("test-00000-of-00001.jsonl", "held-out"),
        ("validation.jsonl", "val"),
    ] {
        std::fs::write(d.path().join(f), row(p)).expect("w");
    }
    let read = |split: &str| {
        load_with(
            d.path(),
            &Fields {
                split: split.into(),
                ..Fields::default()
            },
        )
        .map(|l| {
            l.examples
                .into_iter()
                .map(|e| e.problem)
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(read("train").expect("train"), ["t"]);
    assert_eq!(read("train_sft").expect("train_sft"), ["sft"]);
    assert_eq!(read("validation").expect("validation"), ["val"]);
    let e = format!("{:#}", read("valid").unwrap_err());
    assert!(e.contains("no \"valid\" split"), "{e}");
    let e = format!("{:#}", read("").unwrap_err());
    assert!(
        e.contains("the split is empty")
            && e.contains("test, train, train_sft, training_extra, validation"),
        "{e}"
    );
}

#[test]
fn inspect_counts_what_load_refuses_or_drops() {
    let (_d, p) = write(
        "mixed.jsonl",
        "{\"problem\": \"a\", \"answer\": \"1\", \"src\": \"x\"}\n{\"problem\": \"b\"}\n{\"problem\": \"a\", \"answer\": \"1\"}\n",
    );
    let i = inspect(&p, &Fields::default()).expect("inspect");
    assert_eq!(i.rows, 3);
    assert_eq!(i.examples.len(), 1);
    assert_eq!(i.duplicates, 1);
    assert_eq!(i.missing_answer.len(), 1);
    assert!(
        i.missing_answer[0].ends_with("mixed.jsonl:2"),
        "{:?}",
        i.missing_answer
    );
    assert_eq!(i.fields[0], ("problem".to_string(), 3));
    assert!(i.fields.contains(&("src".to_string(), 1)));
}

#[test]
fn numbers_keep_the_text_they_were_written_as() {
    let (_d, p) = write(
        "n.jsonl",
        concat!(
            "{\"problem\": \"a\", \"answer\": 0.1, \"level\": 3}\n",
            "{\"problem\": \"b\", \"answer\": 123456789012345678901234567890, \"id\": 7}\n",
            "{\"problem\": \"c\", \"answer\": 1e20, \"level\": \"Level 2\"}\n",
            "{\"problem\": \"d\", \"answer\": -2.50}\n",
        ),
    );
    let rows = load(&p).expect("load");
    let answers: Vec<&str> = rows.iter().map(|e| e.answer.as_str()).collect();
    assert_eq!(
        answers,
        ["0.1", "123456789012345678901234567890", "1e20", "-2.50"]
    );
    assert_eq!(rows[1].id, "7");
    assert_eq!((rows[0].level, rows[2].level), (Some(3), Some(2)));
    // The same in a JSON array.
    let (_d2, a) = write(
        "n.json",
        "[{\"problem\": \"a\", \"answer\": 0.1},\n {\"problem\": \"b\", \"answer\": 1e20}]",
    );
    let answers: Vec<String> = load(&a)
        .expect("load")
        .into_iter()
        .map(|e| e.answer)
        .collect();
    assert_eq!(answers, ["0.1", "1e20"]);
}

#[test]
fn duplicate_keys_bad_levels_and_nested_answers_are_refused_naming_the_place() {
    let err = |name: &str, text: &str| format!("{:#}", load(&write(name, text).1).unwrap_err());
    let e = err(
        "d.jsonl",
        "{\"problem\": \"a\", \"answer\": \"1\"}\n{\"problem\": \"b\", \"answer\": \"1\", \"answer\": \"2\"}\n",
    );
    assert!(e.contains("d.jsonl:2: key `answer` appears twice"), "{e}");
    let e = err("d.csv", "problem,answer,answer\na,1,2\n");
    assert!(e.contains("d.csv:1: column `answer` appears twice"), "{e}");
    for (level, shown) in [("-3", "\"-3\""), ("3.5", "\"3.5\""), ("hard", "\"hard\"")] {
        let e = err("l.csv", &format!("problem,answer,level\na,1,{level}\n"));
        assert!(
            e.contains("l.csv:2: field `level` must be a whole number >= 0") && e.contains(shown),
            "{level}: {e}"
        );
    }
    let ok = load(&write("l.csv", "problem,answer,level\na,1,3.0\nb,2,Level ?\n").1).expect("ok");
    assert_eq!((ok[0].level, ok[1].level), (Some(3), None));
    let e = err(
        "n.jsonl",
        "{\"problem\": \"a\", \"answer\": [\"2\", \"3\"]}\n",
    );
    assert!(
        e.contains("n.jsonl:1: field `answer` must be a string"),
        "{e}"
    );
}

/// A Parquet file of one row: float32 0.1, float64 1e20 and non-UTF-8 bytes.
fn parquet_row(path: &std::path::Path, raw: &[u8]) {
    use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, FloatType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let schema = std::sync::Arc::new(
        parquet::schema::parser::parse_message_type(
            "message m { required binary problem (UTF8); required float a32; \
             required double a64; required binary raw; }",
        )
        .expect("schema"),
    );
    let file = std::fs::File::create(path).expect("create");
    let props = std::sync::Arc::new(WriterProperties::builder().build());
    let mut w = SerializedFileWriter::new(file, schema, props).expect("writer");
    let mut rg = w.next_row_group().expect("row group");
    let mut k = 0;
    while let Some(mut col) = rg.next_column().expect("column") {
        match k {
            0 => col
                .typed::<ByteArrayType>()
                .write_batch(&[ByteArray::from("p")], None, None)
                .map(|_| ()),
            1 => col
                .typed::<FloatType>()
                .write_batch(&[0.1f32], None, None)
                .map(|_| ()),
            2 => col
                .typed::<DoubleType>()
                .write_batch(&[1e20f64], None, None)
                .map(|_| ()),
            _ => col
                .typed::<ByteArrayType>()
                .write_batch(&[ByteArray::from(raw.to_vec())], None, None)
                .map(|_| ()),
        }
        .expect("write");
        col.close().expect("close");
        k += 1;
    }
    rg.close().expect("close");
    w.close().expect("close");
}

#[test]
fn parquet_floats_are_their_shortest_decimal_and_bytes_are_no_text() {
    let d = tempfile::tempdir().expect("tmp");
    let p = d.path().join("f.parquet");
    parquet_row(&p, &[255, 254]);
    let with = |answer: &str| Fields {
        answer: answer.into(),
        ..Fields::default()
    };
    let one = |answer: &str| load_with(&p, &with(answer)).map(|l| l.examples[0].answer.clone());
    assert_eq!(one("a32").expect("float32"), "0.1");
    assert_eq!(one("a64").expect("float64"), "100000000000000000000");
    let e = format!("{:#}", one("raw").unwrap_err());
    assert!(
        e.contains("f.parquet: row 1: field `raw` must be a string") && e.contains("[255,254]"),
        "{e}"
    );
}
