//! Placeholder: the compose tests live on the main branch (issue 2); this file
//! only exists so that the `mod compose;` line in `tests.rs` compiles on the
//! `store` branch. Replace it with main's version when merging.
