//! `spark money round|align|validate`.

use std::io::Write;

use crate::spark;

#[test]
fn round_prints_the_value() {
    let run = spark(&["money", "round", "2.345", "--dp", "2"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "2.34\n"));
    let run = spark(&["money", "round", "-2.5", "--dp", "0", "--mode", "half-up"]);
    assert_eq!(run.stdout, "-3\n");
    let run = spark(&["money", "round", "1.2", "--dp", "2", "--json"]);
    assert_eq!(run.json(), serde_json::json!({ "value": "1.20" }));
    for mode in ["half-even", "half-up", "half-down", "down", "up", "floor", "ceiling"] {
        assert_eq!(spark(&["money", "round", "1.25", "--dp", "1", "--mode", mode]).code, 0, "{mode}");
    }
}

#[test]
fn round_rejects_bad_input_with_exit_2() {
    for (args, needle) in [
        (&["money", "round", "1e5", "--dp", "2"][..], "exponent"),
        (&["money", "round", "1,5", "--dp", "2"], "commas"),
        (&["money", "round", "NaN", "--dp", "2"], "NaN"),
        (&["money", "round", " 1", "--dp", "2"], "whitespace"),
        (&["money", "round", "1", "--dp", "29"], "at most 28"),
        (&["money", "round", "1", "--dp", "2", "--mode", "bankers"], "unknown rounding mode"),
    ] {
        let run = spark(args);
        assert_eq!(run.code, 2, "{args:?}");
        assert!(run.stdout.is_empty());
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn align_on_bist_and_fixed_ticks() {
    let run = spark(&["money", "align", "101.37", "--table", "bist"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "101.40\n"));
    let run = spark(&["money", "align", "49.99", "--table", "bist", "--json"]);
    assert_eq!(run.json(), serde_json::json!({ "price": "50.00", "tick": "0.05" }));
    // --side without --mode is passive.
    let run = spark(&["money", "align", "101.37", "--table", "bist", "--side", "buy"]);
    assert_eq!(run.stdout, "101.30\n");
    let run = spark(&["money", "align", "101.31", "--table", "bist", "--side", "sell"]);
    assert_eq!(run.stdout, "101.40\n");
    let run = spark(&["money", "align", "101.37", "--tick", "0.05", "--mode", "down"]);
    assert_eq!(run.stdout, "101.35\n");
}

#[test]
fn align_reject_exits_1_naming_nearest_prices() {
    let run = spark(&["money", "align", "101.37", "--tick", "0.05", "--mode", "reject"]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.is_empty());
    assert_eq!(run.stderr, "price 101.37 is not a multiple of tick 0.05 (nearest valid: 101.35, 101.40)\n");
    let run = spark(&["money", "align", "101.37", "--tick", "0.05", "--mode", "reject", "--json"]);
    assert_eq!(run.code, 1);
    let v = run.json();
    assert_eq!(
        (v["ok"].as_bool(), v["below"].as_str(), v["above"].as_str()),
        (Some(false), Some("101.35"), Some("101.40"))
    );
    // An aligned price passes reject.
    let run = spark(&["money", "align", "101.35", "--tick", "0.05", "--mode", "reject"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "101.35\n"));
}

#[test]
fn align_reads_a_table_file_and_reports_bad_ones() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "[[bands]]\nfrom = \"0\"\ntick = \"0.5\"\n[[bands]]\nfrom = \"10\"\ntick = \"1\"").unwrap();
    let path = file.path().to_str().unwrap();
    let run = spark(&["money", "align", "10.4", "--table", path]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "10\n"));

    let mut bad = tempfile::NamedTempFile::new().unwrap();
    writeln!(bad, "[[bands]]\nfrom = \"0\"\ntick = 0.5").unwrap();
    let run = spark(&["money", "align", "1", "--table", bad.path().to_str().unwrap()]);
    assert_eq!(run.code, 2);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("line 3"), "{}", run.stderr);

    let run = spark(&["money", "align", "1", "--table", "/nonexistent/table.toml"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("cannot read tick table"), "{}", run.stderr);
    let run = spark(&["money", "align", "0", "--tick", "0.05"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("greater than zero"), "{}", run.stderr);
}

fn rules_file() -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        "currency = \"TRY\"\ntick_table = {{ preset = \"bist-equity\" }}\nmin_notional = \"1000\"\n\n[lot]\nstep = \"1\"\nmin = \"1\"\nmax = \"100000\"\n"
    )
    .unwrap();
    file
}

#[test]
fn validate_ok_and_every_violation() {
    let rules = rules_file();
    let path = rules.path().to_str().unwrap();
    let run = spark(&["money", "validate", "--rules", path, "--side", "buy", "--price", "101.30", "--qty", "10"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "ok\n"));
    let run =
        spark(&["money", "validate", "--rules", path, "--side", "buy", "--price", "101.30", "--qty", "10", "--json"]);
    assert_eq!(run.json(), serde_json::json!({ "ok": true, "violations": [] }));

    let run = spark(&["money", "validate", "--rules", path, "--side", "buy", "--price", "101.37", "--qty", "0.5"]);
    assert_eq!(run.code, 1);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", run.stdout);
    assert!(lines[0].contains("nearest valid: 101.30, 101.40; passive: 101.30"), "{}", lines[0]);

    let run =
        spark(&["money", "validate", "--rules", path, "--side", "sell", "--price", "101.37", "--qty", "0.5", "--json"]);
    assert_eq!(run.code, 1);
    let v = run.json();
    assert_eq!(v["ok"], false);
    let rules: Vec<&str> = v["violations"].as_array().unwrap().iter().map(|v| v["rule"].as_str().unwrap()).collect();
    assert_eq!(rules, ["price_off_tick", "quantity_off_step", "quantity_below_min", "notional_below_min"]);
    assert_eq!(v["violations"][0]["suggested"], "101.40");
}

#[test]
fn validate_bad_input_exits_2() {
    let rules = rules_file();
    let path = rules.path().to_str().unwrap();
    let run = spark(&["money", "validate", "--rules", path, "--side", "hold", "--price", "1", "--qty", "1"]);
    assert_eq!(run.code, 2);
    let run = spark(&["money", "validate", "--rules", path, "--side", "buy", "--price", "1.0e2", "--qty", "1"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("exponent"));
    let run =
        spark(&["money", "validate", "--rules", "/nonexistent.toml", "--side", "buy", "--price", "1", "--qty", "1"]);
    assert_eq!(run.code, 2);
    assert_eq!(run.stderr.lines().count(), 1);
}
