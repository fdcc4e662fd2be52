//! The served OpenAPI document, fuzzed by schemathesis (PyPI) with every check on:
//! responses match the schema, invalid input is refused with a 4xx (never a 500),
//! valid input is accepted, auth is enforced, created resources can be read back.
//! A fixed seed keeps the run repeatable; one configuration suffices, as nothing
//! here is store- or driver-specific that the other suites do not cover.
//!
//! Three exclusions, each explained:
//! - the WebSocket routes: a plain HTTP client can only ever get its 426 (covered in
//!   `errors`), which the fuzzer's generic rules report as valid input refused;
//! - `ensure_resource_availability`: its stateful phase adds a random, non-existent
//!   `user_id` to a conversation it just created and reads the 404 `User ... not
//!   found` (the contract's answer for an unknown user) as the conversation missing;
//! - `POST /api/auth/logout`: it ends the very session whose token the fuzzer sends
//!   with every later request, which would turn the rest of the run into 401s (the
//!   `sessions` tests cover it).

use tests::prelude::*;

const SCHEMATHESIS: &str =
    "import sys; from schemathesis.cli import schemathesis as cli; sys.argv[0] = 'schemathesis'; sys.exit(cli())";

async fn schemathesis_finds_nothing(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let user = api.new_user("fuzz").await?;
    let args: Vec<String> = [
        "-c",
        SCHEMATHESIS,
        "run",
        &format!("{}/openapi.json", srv.base_url()),
        "--checks",
        "all",
        "--exclude-checks",
        "ensure_resource_availability",
        "--header",
        &format!("Authorization: Bearer {}", user.token),
        "--exclude-path",
        "/api/chat/ws/{conversation_id}",
        "--exclude-path",
        "/api/chat/ws",
        "--exclude-path",
        "/api/auth/logout",
        "--max-examples",
        "40",
        "--seed",
        "20261201",
        "--no-color",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    // schemathesis exits non-zero on any finding; `run` turns that into the failure,
    // with the report.
    tests::python::run("schemathesis", "schemathesis", &args).await?;
    Ok(())
}

tests::e2e_on!(schemathesis_finds_nothing, |o| o, [sqlite_uring => (Sqlite, Uring)]);
