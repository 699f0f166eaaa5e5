//! The JSON schemas committed under `docs/` (settings, the Docker answers the UI reads) are
//! generated from the Rust types; each has a test that fails when the committed file is stale
//! and rewrites it with `BERTH_UPDATE_SCHEMA=1`.

use std::path::Path;

use serde_json::Value;

/// Asserts that `docs/<name>` holds `schema` as pretty JSON; with `BERTH_UPDATE_SCHEMA` set,
/// writes it first. `test` names the test to run, for the message.
pub fn assert_fresh(name: &str, schema: &Value, test: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs")
        .join(name);
    let mut want = serde_json::to_string_pretty(schema).expect("a schema serialises");
    want.push('\n');
    if std::env::var_os("BERTH_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &want).expect("writing the schema");
    }
    let got = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "{} is stale: run BERTH_UPDATE_SCHEMA=1 cargo test -p berth-agent --lib {test}",
        path.display()
    );
}
