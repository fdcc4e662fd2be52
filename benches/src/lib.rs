//! Shared scaffolding of the criterion benches: throw-away databases on the local
//! PostgreSQL (the test kit's), so a bench measures a fresh, known schema and leaves
//! nothing behind.

pub use testkit::ScratchDatabase;
