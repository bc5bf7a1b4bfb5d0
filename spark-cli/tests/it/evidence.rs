//! `spark keygen` and `spark evidence seal|verify` on a real bundle.

use crate::spark;

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn a_signed_bundle_verifies_and_any_tampering_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("spark.key");
    let run = spark(&["keygen", "--out", path(&key)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let public = tmp.path().join("spark.key.pub");
    assert!(public.exists());
    // Never overwritten: exit 2, one line naming the file.
    let run = spark(&["keygen", "--out", path(&key)]);
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert!(run.stderr.contains("spark.key") && run.stderr.contains("exists already"), "{}", run.stderr);

    let bundle = tmp.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::write(bundle.join("release_tag.txt"), b"v1.4.0 abc123\n").unwrap();
    std::fs::write(bundle.join("canary_plan_v1.4.0.txt"), b"5% for 15m\n").unwrap();
    let run = spark(&["evidence", "seal", path(&bundle), "--sign-key", path(&key)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("signed by keyid"), "{}", run.stdout);

    let run = spark(&["evidence", "verify", path(&bundle), "--key", path(&public)]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("intact: 2 files, signature verified"), "{}", run.stdout);
    let run = spark(&["evidence", "verify", path(&bundle), "--key", path(&public), "--json"]);
    assert_eq!(run.code, 0);
    assert_eq!(run.json()["intact"], true);

    // A wrong public key: exit 1, a bad signature.
    let other = tmp.path().join("other.key");
    assert_eq!(spark(&["keygen", "--out", path(&other)]).code, 0);
    let run = spark(&["evidence", "verify", path(&bundle), "--key", path(&tmp.path().join("other.key.pub"))]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stdout.starts_with("bad signature: "), "{}", run.stdout);

    // One byte flipped: exit 1, one line naming the file.
    let file = bundle.join("canary_plan_v1.4.0.txt");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let run = spark(&["evidence", "verify", path(&bundle), "--key", path(&public)]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(run.stdout.trim_end().lines().collect::<Vec<_>>().len(), 1, "{}", run.stdout);
    assert!(run.stdout.starts_with("modified: canary_plan_v1.4.0.txt "), "{}", run.stdout);
    let run = spark(&["evidence", "verify", path(&bundle), "--json"]);
    assert_eq!(run.code, 1);
    assert_eq!(run.json()["problems"][0], serde_json::json!({"problem": "modified", "name": "canary_plan_v1.4.0.txt"}));
}

#[test]
fn bad_input_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let run = spark(&["evidence", "verify", path(&tmp.path().join("none"))]);
    assert_eq!(run.code, 2, "{}", run.stdout);
    let key = tmp.path().join("bad.pub");
    std::fs::write(&key, "zz\n").unwrap();
    let run = spark(&["evidence", "verify", path(tmp.path()), "--key", path(&key)]);
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert!(run.stderr.contains("bad.pub"), "{}", run.stderr);
    // An unsigned bundle verified without a key is intact, with a note.
    std::fs::write(tmp.path().join("a.txt"), b"a").unwrap();
    assert_eq!(spark(&["evidence", "seal", path(tmp.path())]).code, 0);
    let run = spark(&["evidence", "verify", path(tmp.path())]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(run.stdout.contains("note: the manifest is unsigned"), "{}", run.stdout);
}
