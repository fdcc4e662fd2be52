//! Shared scaffolding of the benches: throw-away databases on the local PostgreSQL
//! (the test kit's), so a bench measures a fresh, known schema and leaves nothing
//! behind, and the release server started on a throw-away embedded store.

pub use testkit::ScratchDatabase;

/// Starts the release server on an ephemeral port with a fresh embedded store in a
/// temporary directory (removed when the returned directory is dropped), with `extra`
/// arguments.
pub fn release_server(
    name: &str,
    extra: &[&str],
) -> anyhow::Result<(testkit::ServerProcess, tempfile::TempDir)> {
    let binary = testkit::server_binary(testkit::Profile::Release)?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir()?;
    let mut args: Vec<std::ffi::OsString> = vec![
        "--secret-key".into(),
        format!("{name}-bench-secret-key-0123456789abcdef").into(),
        "--data-dir".into(),
        dir.path().into(),
    ];
    args.extend(extra.iter().map(Into::into));
    let server = testkit::ServerProcess::start(&binary, &args, &[], testkit::Output::Memory)?;
    Ok((server, dir))
}
